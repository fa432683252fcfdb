"""``napari-difftt calibrate``: set a trained model's segmentation threshold from labelled volumes.

A flow model segments where its probability (the deformed prior) exceeds the model's
``threshold``. Training a fresh flow model on dense labels sets it at the end
(:mod:`core.train.calibration`); this command does the same for a checkpoint written without
it (or for other data): each of the first 8 labelled volumes is predicted whole, every level
0.20, 0.25, …, 0.80 is scored by its mean Dice over the labelled voxels, and the best level
(ties: the one nearest ½) is written into a copy of the checkpoint, weights untouched. The
table of levels and the chosen one are printed and kept in the copy's ``training.metrics``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "set a trained model's segmentation threshold from labelled volumes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT",
                        help="trained model to calibrate")
    parser.add_argument("--images", type=Path, required=True, metavar="DIR",
                        help="folder of images (.nii/.nii.gz), e.g. the validation images")
    parser.add_argument("--labels", type=Path, required=True, metavar="DIR",
                        help="folder of their labels (0/1, the unlabelled value left out)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the calibrated checkpoint (may be CKPT itself with --overwrite)")
    parser.add_argument("--ignore-value", type=int, default=255,
                        help="label value of unlabelled voxels (default 255)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from ..core.data import load_nifti_folder
    from ..core.inference import load_model
    from ..core.io import check_output_file, save_checkpoint
    from ..core.train.calibration import THRESHOLDS, best_level, level_dice

    check_output_file(args.out, overwrite=args.overwrite, what="calibrated checkpoint")
    loaded = load_model(args.checkpoint, device=args.device)
    model = loaded.model
    samples = load_nifti_folder(args.images, args.labels, ignore_value=args.ignore_value)
    wrong = next((s for s in samples if s.image.ndim != model.ndim), None)
    if wrong is not None:
        raise ValueError(f"{args.checkpoint} is a {model.ndim}D model but {wrong.name} in "
                         f"{args.images} is {wrong.image.ndim}D: calibrate on volumes of "
                         "the model's dimensionality")
    dice, names = level_dice(model, samples, args.ignore_value)
    if dice is None:
        raise ValueError(f"no volume in {args.labels} holds organ voxels (label 1): the "
                         "threshold cannot be read off them")
    threshold = best_level(dice)
    for level, value in zip(THRESHOLDS, dice, strict=True):
        chosen = "  ← chosen" if level == threshold else ""
        print(f"threshold {level:.2f}: mean Dice {value:.4f}{chosen}")
    half = float(dice[THRESHOLDS.index(0.5)])
    print(f"{args.checkpoint.name}: threshold {model.threshold:g} → {threshold:g} (mean Dice "
          f"{half:.4f} at 0.5, {float(dice.max()):.4f} at {threshold:g}, {len(names)} volume(s))")
    payload = loaded.checkpoint  # the file as read (weights in their stored dtype)
    payload["model"]["threshold"] = threshold
    training = payload.get("training")
    if isinstance(training, dict):
        metrics = training.setdefault("metrics", {})
        metrics["calibration"] = {"threshold": threshold, "volumes": names,
                                  "levels": list(THRESHOLDS),
                                  "dice": [float(v) for v in dice]}
    save_checkpoint(args.out, payload)
    print(f"wrote {args.out}")
    return 0
