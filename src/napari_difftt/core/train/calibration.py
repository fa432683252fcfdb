"""The segmentation threshold of a trained flow model, read off labelled volumes.

A flow model's probability is the deformed prior, whose boundary is as soft as the prior's
profile: trained with cross-entropy its ½-level sits inside the organ (at 64³ the segmentation
held 76–82 % of the organ's volume, docs/RESULTS.md, "The segmentation threshold"). Any other
level of the deformed prior is again a deformed ellipsoid, so thresholding elsewhere keeps the
topology; the level that fits the validation labels (or, with none, the training labels)
best is the model's ``threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data import Sample
from ..inference import predict_volume
from ..metrics import dice

__all__ = ["CALIBRATION_VOLUMES", "THRESHOLDS", "best_level", "calibrated_threshold",
           "level_dice"]

THRESHOLDS = tuple(round(0.2 + 0.05 * k, 2) for k in range(13))  # 0.2, 0.25, …, 0.8
CALIBRATION_VOLUMES = 8  # the first volumes with organ voxels the threshold is fitted to


def calibrated_threshold(model: torch.nn.Module, samples: Sequence[Sample],
                         ignore_value: int = 255) -> float | None:
    """The level of :data:`THRESHOLDS` whose segmentation has the highest mean Dice over the
    labelled voxels of the first :data:`CALIBRATION_VOLUMES` ``samples`` holding organ voxels,
    each predicted whole (ties: the level nearest ½). None when no sample has organ voxels.
    The model is left in the mode it was in."""
    mean_dice, _ = level_dice(model, samples, ignore_value)
    return None if mean_dice is None else best_level(mean_dice)


def level_dice(model: torch.nn.Module, samples: Sequence[Sample],
               ignore_value: int = 255) -> tuple[np.ndarray | None, list[str]]:
    """Mean Dice ``(len(THRESHOLDS),)`` of each level over the labelled voxels of the first
    :data:`CALIBRATION_VOLUMES` ``samples`` holding organ voxels (predicted whole, in eval
    mode; the model's mode is restored), and those samples' names; ``(None, [])`` when no
    sample has organ voxels."""
    scores, names = [], []
    training = model.training
    model.eval()
    try:
        for sample in samples:
            if len(scores) == CALIBRATION_VOLUMES:
                break
            labels = sample.labels
            if labels is None or not (labels == 1).any():
                continue
            probability = predict_volume(model, sample.image, normalise=False,
                                         topology=False).probability
            known = labels != ignore_value
            inside, values = labels[known] == 1, probability[known]
            scores.append([dice(values > level, inside) for level in THRESHOLDS])
            names.append(sample.name)
    finally:
        model.train(training)
    return (np.mean(scores, axis=0) if scores else None), names


def best_level(mean_dice: np.ndarray) -> float:
    """The level of :data:`THRESHOLDS` with the highest ``mean_dice`` (ties: the one nearest
    ½)."""
    levels = np.asarray(THRESHOLDS)
    best = np.flatnonzero(mean_dice == mean_dice.max())
    return float(levels[best[np.argmin(np.abs(levels[best] - 0.5))]])
