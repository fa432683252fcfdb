"""``napari-difftt predict``: segment NIfTI volumes with a trained checkpoint.

For each input ``NAME.nii[.gz]`` it writes, into ``--out``, ``NAME_seg.nii.gz`` (labels 0/1) and
on request ``NAME_prob.nii.gz`` (probability), ``NAME_jacdet.nii.gz`` (det ∇Φ, central
differences) with ``NAME_displacement.npy`` ((n, *S) float32, voxels, array order) — all with
the input's own affine and header. Nothing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..core.flow import jacobian_det
    from ..core.inference import default_checkpoint, load_model, predict_volume
    from ..core.io import read_nifti, write_nifti
    from ..core.progress import ProgressBar

    inputs = list_inputs(args.inputs)
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    loaded = load_model(checkpoint, device=args.device)
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
    trained_spacing = loaded.checkpoint.get("spacing")
    for index, path in enumerate(inputs, 1):
        volume = read_nifti(path)
        _warn_spacing(path, volume.spacing, trained_spacing)
        bar = None if args.quiet else ProgressBar(f"[{index}/{len(inputs)}] {path.name}")
        try:
            prediction = predict_volume(
                loaded.model, volume.array, device=loaded.device, progress=bar
            )
        finally:
            if bar is not None:
                bar.close()
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


def _warn_spacing(path: Path, spacing, trained) -> None:
    """Say so when a volume's voxels differ by > 25 % from those the model was trained on."""
    if not trained or len(trained) != len(spacing):
        return
    ratios = [s / t for s, t in zip(spacing, trained, strict=True) if t > 0]
    if any(not 0.8 <= r <= 1.25 for r in ratios):
        print(
            f"warning: {path} has {tuple(round(s, 3) for s in spacing)} mm voxels but the model "
            f"was trained on {tuple(round(t, 3) for t in trained)} mm; predictions may suffer "
            "(resample the volume, or train with --spacing)",
            file=sys.stderr,
        )


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
