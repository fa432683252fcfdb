"""``napari-difftt predict``: segment NIfTI volumes with a trained checkpoint.

For each input ``NAME.nii[.gz]`` it writes, into ``--out``, ``NAME_seg.nii.gz`` (labels 0/1) and
on request ``NAME_prob.nii.gz`` (probability), ``NAME_jacdet.nii.gz`` (det ∇Φ, central
differences) with ``NAME_displacement.npy`` ((n, *S) float32, voxels, array order) — all with
the input's own affine and header. Nothing is overwritten without ``--overwrite``.

Every prediction prints its topology report (:func:`core.metrics.topology_report`: fold
fractions, components with face and full connectivity) and warns, naming the file, when the
segmentation has more than one component or any digital fold. A volume whose spacing differs
from the model's training spacing by more than 20 % gets a warning; ``--spacing MM`` (or
``--spacing model``) resamples it for the network and the result back onto the input's grid.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HELP = "segment NIfTI volumes with a trained checkpoint (default: the bundled model)"

SEGMENTATION_SUFFIX = "_seg"
PROBABILITY_SUFFIX = "_prob"
JACOBIAN_SUFFIX = "_jacdet"
DISPLACEMENT_SUFFIX = "_displacement"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="NIfTI volumes (.nii/.nii.gz) or folders of them",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="CKPT",
        help="trained model (default: the bundled resources/difftt_phantom_bch.pt)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--probabilities", action="store_true", help="also write NAME_prob.nii.gz")
    parser.add_argument(
        "--jacobian",
        action="store_true",
        help="also write NAME_jacdet.nii.gz and NAME_displacement.npy (flow models)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)"
    )
    parser.add_argument(
        "--spacing",
        metavar="MM",
        help="resample each volume to this isotropic spacing in mm (or 'model': the model's "
        "training spacing) for the network; outputs are resampled back onto the input's grid "
        "(linear probabilities, then > 0.5); the topology report is the network grid's. "
        "Not with --jacobian",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..core.data import _resample
    from ..core.flow import jacobian_det
    from ..core.inference import default_checkpoint, load_model, predict_volume, spacing_mismatch
    from ..core.io import check_output_folder, read_nifti, write_nifti
    from ..core.progress import ProgressBar

    inputs = list_inputs(args.inputs)
    check_output_folder(args.out, what="--out")
    if args.spacing is not None and args.jacobian:
        raise ValueError("--spacing and --jacobian cannot be combined: the displacement lives on "
                         "the resampled grid, not the input's")
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    loaded = load_model(checkpoint, device=args.device)
    trained_spacing = loaded.checkpoint.get("spacing")
    target = _target_spacing(args.spacing, trained_spacing)
    wants_field = args.jacobian and loaded.checkpoint["model"].get("kind") != "unet"
    if args.jacobian and not wants_field:
        print(
            f"note: {checkpoint} is a U-Net (no flow): --jacobian writes nothing", file=sys.stderr
        )
    planned = {path: _outputs(args.out, path, args.probabilities, wants_field) for path in inputs}
    if not args.overwrite:
        existing = [str(p) for outs in planned.values() for p in outs.values() if p.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} exists ({len(existing)} output(s) in all); pass --overwrite"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(inputs, 1):
        volume = read_nifti(path)
        array, spacing = volume.array, volume.spacing
        if target is not None:
            array = _resample(array.astype(np.float32), spacing, target, order=1)
            spacing = (target,) * array.ndim
        warning = spacing_mismatch(spacing, trained_spacing, str(path))
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
        bar = None if args.quiet else ProgressBar(f"[{index}/{len(inputs)}] {path.name}")
        try:
            prediction = predict_volume(loaded.model, array, device=loaded.device, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        _report_topology(path, prediction.topology)
        if target is not None:
            probability = _back_onto(prediction.probability, spacing, volume.spacing,
                                     volume.array.shape)
            prediction = prediction._replace(
                probability=probability, segmentation=(probability > 0.5).astype(np.uint8)
            )
        outs = planned[path]
        write_nifti(
            outs["seg"], prediction.segmentation, like=volume, labels=True, overwrite=args.overwrite
        )
        if "prob" in outs:
            write_nifti(outs["prob"], prediction.probability, like=volume, overwrite=args.overwrite)
        if "jacdet" in outs and prediction.displacement is not None:
            displacement = prediction.displacement.astype(np.float32)
            det = jacobian_det(torch.from_numpy(displacement)[None])[0].numpy()
            write_nifti(outs["jacdet"], det, like=volume, overwrite=args.overwrite)
            np.save(outs["displacement"], displacement)
        voxels = int(prediction.segmentation.sum())
        print(f"{path.name}: {voxels} foreground voxel(s) → {outs['seg']}")
    return 0


def _report_topology(path: Path, report: dict) -> None:
    """Print the topology report; warn, naming the file, when the promise does not hold."""
    face, full = report["connectivity"]
    folds = (
        "no flow (U-Net)" if report["folding_digital"] is None else
        f"det J <= 0 on {report['folding_central']:.4f} % (central) / "
        f"{report['folding_digital']:.4f} % (digital) of voxels"
    )
    print(f"{path.name}: {report['components']} component(s) ({face}-connectivity), "
          f"{report['components_full']} ({full}-connectivity); {folds}")
    problems = []
    if report["components"] != 1:
        problems.append(f"{report['components']} components ({face}-connectivity), not 1")
    if report["folding_digital"]:
        problems.append(f"digital folds on {report['folding_digital']:.4f} % of voxels")
    if problems:
        print(f"warning: {path}: the segmentation's topology differs from the prior's: "
              f"{'; '.join(problems)}", file=sys.stderr)


def _target_spacing(option: str | None, trained) -> float | None:
    """The isotropic spacing (mm) of ``--spacing``: a number, or 'model' (isotropic trained)."""
    if option is None:
        return None
    if option == "model":
        if not trained or len(set(trained)) != 1:
            raise ValueError(f"--spacing model needs an isotropic training spacing in the "
                             f"checkpoint, which has {trained}; give --spacing MM")
        return float(trained[0])
    try:
        value = float(option)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--spacing must be a positive number of mm or 'model', got {option!r}")
    return value


def _back_onto(array, spacing, original: tuple[float, ...], shape: tuple[int, ...]):
    """``array`` ``(*S')`` of ``spacing`` mm resampled (linearly, voxel 0 kept in place) onto
    the input's grid: ``shape`` voxels of ``original`` mm — the inverse of ``data._resample``."""
    import numpy as np
    from scipy import ndimage

    step = np.asarray(original, dtype=float) / np.asarray(spacing, dtype=float)
    return ndimage.affine_transform(array, step, output_shape=shape, order=1, mode="nearest")


def list_inputs(items: list[Path]) -> list[Path]:
    """NIfTI files named directly or found (sorted) in the named folders."""
    files: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if is_nifti(p))
            if not found:
                raise FileNotFoundError(f"{item}: folder holds no .nii/.nii.gz files")
            files += found
        elif item.is_file():
            if not is_nifti(item):
                raise ValueError(f"{item}: not a NIfTI file (.nii or .nii.gz)")
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    stems = [nifti_stem(p) for p in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs are named {duplicates[0]!r}: outputs would collide")
    return files


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".nii", ".nii.gz"))


def nifti_stem(path: Path) -> str:
    """File name without .nii / .nii.gz."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.removesuffix(".nii")


def _outputs(out: Path, path: Path, probabilities: bool, field: bool) -> dict[str, Path]:
    stem = nifti_stem(path)
    outs = {"seg": out / f"{stem}{SEGMENTATION_SUFFIX}.nii.gz"}
    if probabilities:
        outs["prob"] = out / f"{stem}{PROBABILITY_SUFFIX}.nii.gz"
    if field:
        outs["jacdet"] = out / f"{stem}{JACOBIAN_SUFFIX}.nii.gz"
        outs["displacement"] = out / f"{stem}{DISPLACEMENT_SUFFIX}.npy"
    return outs
