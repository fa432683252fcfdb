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
        "(linear probabilities, then > the model's threshold); the topology report is the "
        "network grid's. Not with --jacobian",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import default_checkpoint, load, plan_files, predict_files
    from ._progress import ProgressBar

    if args.spacing is not None and args.jacobian:
        raise ValueError("--spacing and --jacobian cannot be combined: the displacement lives on "
                         "the resampled grid, not the input's")
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    what = ["seg"] + ["prob"] * args.probabilities + ["jacdet", "displacement"] * args.jacobian
    plan_files(args.inputs, args.out, what, args.overwrite)  # refused before the model loads
    loaded = load(checkpoint, device=args.device)
    target = _target_spacing(args.spacing, loaded.checkpoint.get("spacing"))
    if args.jacobian and loaded.model.kind == "unet":
        print(f"note: {checkpoint} is a U-Net (no flow): --jacobian writes nothing",
              file=sys.stderr)
        what = [key for key in what if key not in ("jacdet", "displacement")]

    def report(path: Path, result, written: list[Path]) -> None:
        if result.warning is not None:
            print(f"warning: {result.warning}", file=sys.stderr)
        _report_topology(path, result.topology)
        voxels = int(result.prediction.segmentation.sum())
        print(f"{path.name}: {voxels} foreground voxel(s) → {written[0]}")

    bar = None if args.quiet else ProgressBar("predict")
    try:
        predict_files(args.inputs, args.out, loaded, what, bar, None, args.overwrite,
                      resample_mm=target, on_case=report)
    finally:
        if bar is not None:
            bar.close()
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
    from ..pipeline import isotropic_spacing

    if option is None:
        return None
    if option == "model":
        return isotropic_spacing(trained)
    try:
        value = float(option)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--spacing must be a positive number of mm or 'model', got {option!r}")
    return value
