"""Probe one ablation row: train it, then report the Dice of the output, of the posed prior and
of the pose level's soft mask, on training and test volumes (the diagnosis behind
docs/RESULTS.md, "Accuracy under the guarantee"). MASK_GAIN, P_EPS and FORCE_GAIN in the
environment override the constants of core.pose / core.models for the run.

    python scripts/experiments/pose_probe.py phantom32 pose_full [ITERATIONS]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

import napari_difftt.core.models as models
import napari_difftt.core.pose as pose
from napari_difftt.core.metrics import dice

sys.path.insert(0, str(Path(__file__).parent))
from segmentation import train_timed
from velocity_ablation import ROWS, load, row_config


def main() -> None:
    dataset, row = sys.argv[1], sys.argv[2]
    iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    torch.set_num_threads(1)
    pose.MASK_GAIN = float(os.environ.get("MASK_GAIN", pose.MASK_GAIN))
    pose._P_EPS = float(os.environ.get("P_EPS", pose._P_EPS))
    models.FORCE_GAIN = float(os.environ.get("FORCE_GAIN", models.FORCE_GAIN))
    print("constants", pose.MASK_GAIN, pose._P_EPS, models.FORCE_GAIN)
    train, test = load(dataset, Path(__file__).parent / "results" / "accuracy")
    config = row_config(ROWS[row], tuple(train[0].image.shape), iterations, width=4)
    trainer, _, seconds = train_timed(row, config, train)
    print(f"train s {seconds:.0f}")
    model = trainer.model
    if model.force_gain is not None:
        print("force gain", model.force_gain.detach().numpy())
    for name, samples in (("train", train[:4]), ("test", test)):
        rows = []
        for sample in samples:
            with torch.no_grad():
                result = model(torch.from_numpy(sample.image)[None, None])
            truth = sample.labels == 1
            mask = result.pose_mask
            rows.append([dice(result.probability[0, 0].numpy() > 0.5, truth),
                         dice(result.prior[0, 0].numpy() > 0.5, truth),
                         np.nan if mask is None else dice(mask[0, 0].numpy() > 0.5, truth),
                         float(result.displacement.abs().max())])
        print(name, "output / posed prior / mask Dice, max |u| voxels",
              np.round(np.mean(rows, 0), 3))


if __name__ == "__main__":
    main()
