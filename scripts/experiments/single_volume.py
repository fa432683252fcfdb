"""The single-volume case: paint a few slices of one volume, fine-tune, segment the whole organ.

One phantom volume (``--organ`` ellipsoid or lobed, ``--size``³), its organ painted on
``--slices`` evenly spaced axial slices (core.slices.evenly_spaced_slices), fine-tuned from the
bundled 3D model for ``--minutes`` through :func:`napari_difftt.fine_tune.fine_tune` — the code
path of the "Segment from my slices" dock — then segmented. Reports the bundled model's Dice
before fine-tuning, Dice/HD95 against the dense labels after, the topology report and the wall
time from the start of fine-tuning to the segmentation (docs/PERFORMANCE.md):

    python scripts/experiments/single_volume.py --threads 2 --minutes 2 \\
        --out scripts/experiments/results/sparse/single64_lobed.json

``--image`` and ``--labels`` take a NIfTI volume and its dense labels instead of a phantom
(e.g. the real-anatomy brain of scripts/experiments/mni_brain.py); HD95 is then in mm.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_difftt.core.allocator import reuse_freed_memory
from napari_difftt.core.data import ORGANS, make_phantom
from napari_difftt.core.inference import default_checkpoint
from napari_difftt.core.io import Volume, read_nifti
from napari_difftt.core.metrics import evaluate_case
from napari_difftt.core.slices import evenly_spaced_slices, paint
from napari_difftt.core.train.config import TUNES
from napari_difftt.fine_tune import FINE_TUNE, fine_tune
from napari_difftt.pipeline import segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--organ", choices=ORGANS, default="lobed")
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--patch", type=int, default=FINE_TUNE["patch"],
                        help="largest training patch edge (measuring FINE_TUNE's default)")
    parser.add_argument("--lr", type=float, default=FINE_TUNE["lr"],
                        help="learning rate (measuring FINE_TUNE's default)")
    parser.add_argument("--tune", choices=TUNES, default=FINE_TUNE["tune"],
                        help="what of the model learns (TrainConfig.tune)")
    parser.add_argument("--keep-prior", action="store_true",
                        help="keep the bundled prior instead of re-fitting it to the slices")
    parser.add_argument("--no-mirror", action="store_true",
                        help="train on the patches as they are (default: TrainConfig's rule)")
    parser.add_argument("--no-image-depth", action="store_true",
                        help="fit the prior to the slices alone (default: TrainConfig's rule)")
    parser.add_argument("--no-image-mask", action="store_true",
                        help="one painted slice: the pose mask learns from it alone (default: "
                        "TrainConfig's rule)")
    parser.add_argument("--no-image-segmentation", action="store_true",
                        help="one painted slice: the segmentation learns from it alone "
                        "(default: TrainConfig's rule)")
    parser.add_argument("--image", type=Path, help="a NIfTI volume instead of a phantom")
    parser.add_argument("--labels", type=Path, help="its dense labels (NIfTI, non-zero = organ)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave malloc alone: a napari started on its own (default: freed "
                        "memory reused, as under napari-difftt demo; core.allocator)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    malloc = "system default (--system-malloc)" if args.system_malloc else reuse_freed_memory()
    torch.set_num_threads(args.threads)
    FINE_TUNE.update(patch=args.patch, lr=args.lr, tune=args.tune)
    if (args.image is None) != (args.labels is None):
        parser.error("--image and --labels go together")
    if args.image is not None:
        volume = read_nifti(args.image)
        truth = (read_nifti(args.labels).array != 0).astype(np.uint8)
        source = {"image": str(args.image), "labels": str(args.labels),
                  "shape": list(volume.array.shape), "spacing": list(volume.spacing)}
    else:
        phantom = make_phantom((args.size,) * 3, seed=args.seed, organ=args.organ)
        volume, truth = Volume(phantom.image, np.eye(4)), phantom.labels
        source = {"size": args.size, "organ": args.organ, "seed": args.seed}
    slices = evenly_spaced_slices(truth, args.slices)
    before = segment(volume, default_checkpoint(3), truth=truth, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run = fine_tune(volume, paint(truth, slices), 0, Path(folder) / "tuned.pt",
                        minutes=args.minutes, device="cpu", keep_prior=args.keep_prior,
                        mirror=False if args.no_mirror else None,
                        image_depth=False if args.no_image_depth else None,
                        image_mask=False if args.no_image_mask else None,
                        image_segmentation=False if args.no_image_segmentation else None)
        finished = list(run.events())[-1]
        wall = time.perf_counter() - started
    after = finished.result
    metrics = evaluate_case(after.prediction.segmentation, truth, volume.spacing,
                            after.prediction.displacement, topology=after.topology)
    report = {
        **source, "slices": list(slices),
        "counted": finished.counted.text, "minutes_budget": args.minutes,
        "threads": args.threads, "load_average": os.getloadavg(), "patch": args.patch,
        "lr": args.lr, "keep_prior": args.keep_prior, "mirror": run.trainer.config.mirror,
        "image_depth": run.trainer.config.image_depth,
        "image_mask": run.trainer.config.image_mask,
        "image_segmentation": run.trainer.config.image_segmentation,
        "smoothness": run.trainer.config.smoothness,
        "tune": run.trainer.config.tune, "malloc": malloc,
        "bundled_dice": before.metrics["dice"], "steps": finished.steps,
        "minutes_to_result": wall / 60, "dice": metrics["dice"], "hd95": metrics["hd95"],
        "topology": after.topology,
    }
    print(json.dumps(report, indent=1, default=float))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
