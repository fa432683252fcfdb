"""Dice against fine-tuning steps: where a fine-tune on one volume's painted slices gains or drifts.

The path of the "Segment from my slices" dock (:func:`napari_difftt.fine_tune.fine_tune`) on one
phantom (``--organ``, 64³, seed 100) painted on ``--slices`` evenly spaced axial slices, but run
for a fixed number of steps (``--iterations``; the cosine follows them, the time budget never
binds) so that models of different speeds are compared step for step. The model in training is
scored against the dense labels (threshold ½, no topology report) after the warm start (step 0:
the prior re-fitted, the fine-tune's velocity space) and at ``--marks``:

    python scripts/experiments/fine_tune_curve.py ellipsoid 3 resources/difftt_phantom_bch.pt \\
        OTHER.pt --threads 1 --json curve.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from napari_difftt.core.data import ORGANS, make_phantom
from napari_difftt.core.inference import predict_volume
from napari_difftt.core.io import Volume
from napari_difftt.core.metrics import dice
from napari_difftt.core.slices import evenly_spaced_slices, paint
from napari_difftt.fine_tune import FINE_TUNE, fine_tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organ", choices=ORGANS)
    parser.add_argument("slices", type=int)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--marks", type=int, nargs="+", default=[10, 25, 50, 100, 150, 200])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    FINE_TUNE["iterations"] = args.iterations
    phantom = make_phantom((64,) * 3, seed=100, organ=args.organ)
    volume, truth = Volume(phantom.image, np.eye(4)), phantom.labels
    painted = paint(truth, evenly_spaced_slices(truth, args.slices))
    runs = []
    for checkpoint in args.checkpoints:
        with tempfile.TemporaryDirectory() as folder:
            run = fine_tune(volume, painted, 0, Path(folder) / "tuned.pt", minutes=1e6,
                            device="cpu", checkpoint=checkpoint)
            curve = [(0, score(run.trainer, volume, truth))]
            for event in run.events():
                if getattr(event, "step", None) in args.marks:
                    curve.append((event.step, score(run.trainer, volume, truth)))
        runs.append({"checkpoint": str(checkpoint), "organ": f"{args.organ}64",
                     "slices": args.slices, "dice_at_step": curve})
        print(json.dumps(runs[-1]), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"iterations": args.iterations, "runs": runs}, indent=1))


def score(trainer, volume: Volume, truth: np.ndarray) -> float:
    """Dice of ``trainer``'s model now (set up first if no step has run), back in training."""
    trainer._setup()
    model = trainer.model.eval()
    prediction = predict_volume(model, volume.array, topology=False)
    model.train()
    return round(float(dice(prediction.segmentation, truth)), 4)


if __name__ == "__main__":
    main()
