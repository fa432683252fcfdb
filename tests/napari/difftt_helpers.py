"""Helpers for the napari and demo tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_SHAPE = (16, 24, 20)  # not a multiple of 16: inference has to pad
TINY_SPACING = (2.0, 1.0, 1.5)


def untrained_checkpoint(path: Path, ndim: int) -> Path:
    import torch

    from napari_difftt.core.io import save_checkpoint
    from napari_difftt.core.models import TemplateTransformer

    torch.manual_seed(0)
    model = TemplateTransformer("bch", ndim=ndim, pieces=2, width=4)
    with torch.no_grad():  # a small non-zero head, so the flow actually moves the prior
        for parameter in model.net.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0.0, 1e-3)
    save_checkpoint(path, {
        "model": model.config(),
        "state_dict": model.state_dict(),
        "spacing": [1.0] * ndim,
        "training": {},
        "versions": {"torch": str(torch.__version__)},
    })
    return path


def blob(shape, centre, radii) -> np.ndarray:
    """A solid ellipsoid mask ``(*shape)`` uint8 (voxel units)."""
    grid = np.indices(shape, dtype=float)
    d2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return (d2 <= 1).astype(np.uint8)


def zero_flow(shape):
    """A :class:`core.inference.CoarseFlow` of one zero velocity on the full grid ``shape``."""
    from napari_difftt.core.flow.velocity import VelocitySpace
    from napari_difftt.core.inference import CoarseFlow

    velocity = np.zeros((len(shape), *shape), np.float32)
    return CoarseFlow(velocity[None], velocity, VelocitySpace(factor=1), tuple(shape),
                      tuple(slice(0, s) for s in shape))


def record_of(image, prediction, kind="svf", **fields):
    """The viewer's prediction record (:class:`pipeline.Result`) of ``prediction`` on the
    image layer ``image``."""
    from napari_difftt.layer_metadata import layer_volume
    from napari_difftt.pipeline import Result

    return Result(prediction, layer_volume(image), None, kind, source=image.unique_id, **fields)
