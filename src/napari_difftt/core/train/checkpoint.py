"""What a training checkpoint holds, and the slim copy that ships a model.

A checkpoint (written atomically by :func:`core.io.save_checkpoint`) is a plain dict:
``model`` (:meth:`TemplateTransformer.config`), ``state_dict``, ``prior``, ``spacing`` (mm),
``training`` (config, step, optimizer/scheduler/RNG states, metrics: enough to resume exactly)
and ``versions``.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import __version__
from ..io import load_checkpoint, save_checkpoint
from ..schema import check_training
from .config import LATER_FIELDS, TrainConfig

__all__ = ["export_checkpoint", "resumable", "slim_checkpoint", "training_payload", "versions"]


def training_payload(
    model: torch.nn.Module,
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    history: list[dict],
    val_dice: float | None,
    rng_states: list[dict],
    world_size: int,
    seconds: float,
    device: torch.device,
    train: Sequence[Any],
    val: Sequence[Any],
) -> dict:
    """The checkpoint of a run at ``step``: the model and everything needed to resume it.

    ``rng_states`` holds each rank's numpy bit-generator state; ``train``/``val`` the samples
    (their names and the first one's spacing, mm, are stored).
    """
    metrics = {
        "loss": history[-1]["loss"] if history else None,
        "val_dice": val_dice,
        "history": history,
    }
    prior = getattr(model, "prior", None)
    return {
        "model": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "prior": prior.to_dict() if prior is not None else None,
        "spacing": [float(s) for s in train[0].spacing],
        "training": {
            "config": config.to_dict(),
            "step": step,
            "seed": config.seed,
            "world_size": world_size,
            "seconds": seconds,
            "device": str(device),
            "train_cases": [s.name for s in train],
            "val_cases": [s.name for s in val],
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"numpy": rng_states, "torch": torch.get_rng_state()},
            "metrics": metrics,
        },
        "versions": versions(),
    }


def resumable(path: str | os.PathLike, checkpoint: dict) -> dict:
    """The checked training state (``checkpoint["training"]``) of a run to resume: step,
    optimizer, scheduler and RNG states and a config of :class:`TrainConfig`'s fields and
    types; :class:`~napari_difftt.errors.CheckpointError` naming the field and the file."""
    return check_training(path, checkpoint, TrainConfig().to_dict(), optional=LATER_FIELDS)


def slim_checkpoint(checkpoint: dict, *, half: bool = False) -> dict:
    """A copy without optimizer/scheduler/RNG states, for shipping a model (not resumable).

    ``half=True`` stores floating weights as float16 (half the size; loading casts them back
    into the model's float32 parameters).
    """
    slim = dict(checkpoint)
    slim["training"] = {
        k: v
        for k, v in checkpoint.get("training", {}).items()
        if k not in ("optimizer", "scheduler", "rng")
    }
    if half:
        slim["state_dict"] = {
            k: v.half() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()
        }
        slim["training"]["exported"] = "float16 weights"
    return slim


def export_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    half: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write :func:`slim_checkpoint` of ``source`` to ``target`` (atomically); returns it."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    return save_checkpoint(target, slim_checkpoint(load_checkpoint(source), half=half))


def versions() -> dict:
    """Versions of what produced a checkpoint."""
    return {
        "napari_difftt": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
