"""The fields of a checkpoint, checked: every one missing, unknown or of the wrong type is a
:class:`~napari_difftt.errors.CheckpointError` naming the field (``model.prior.shape``) and
the file.

A checksum (:mod:`.io`) proves a file is the one written; these checks prove it holds what this
version reads: :func:`check_model` before a model is built (:func:`core.inference.load_model`),
:func:`check_training` before a run is resumed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import torch

from ..errors import CheckpointError

__all__ = ["check_model", "check_training"]

Types = tuple[type | None, ...]  # allowed types of a field; None: the value None
NUMBER: Types = (float,)  # int or float (never bool)
COUNT: Types = (int,)
TEXT: Types = (str,)
FLAG: Types = (bool,)
TABLE: Types = (dict,)
ARRAY: Types = (list, tuple)

TOP = {"model": TABLE, "state_dict": TABLE, "spacing": ARRAY, "training": TABLE,
       "versions": TABLE, "prior": (dict, None), "format": TEXT, "version": COUNT}
MODEL = {"kind": TEXT, "ndim": COUNT, "prior": TABLE, "pieces": COUNT, "bch_order": COUNT,
         "velocity": TABLE, "alpha": NUMBER, "width": COUNT, "smoothness": NUMBER,
         "method": TEXT, "squarings": (int, None), "image_channels": COUNT, "pose": FLAG,
         "threshold": NUMBER, "feature_level": COUNT, "fine_skips": FLAG}
# configs written before the pose level, the calibrated threshold, the feature level or the
# folded finer levels have none
MODEL_OPTIONAL = ("pose", "threshold", "feature_level", "fine_skips")
VELOCITY = {"parameterisation": TEXT, "factor": COUNT, "lattice": (int, None),
            "sigma": NUMBER, "bound": NUMBER}
PRIORS = {
    "generalised_gaussian": {"type": TEXT, "ndim": COUNT, "mean": ARRAY, "covariance": ARRAY,
                             "beta": NUMBER, "parameterisation": TEXT, "train_mean": FLAG,
                             "train_beta": FLAG},
    "image": {"type": TEXT, "ndim": COUNT, "shape": ARRAY},
}
TRAINING = {"config": TABLE, "step": COUNT, "optimizer": TABLE, "scheduler": TABLE,
            "rng": TABLE, "seed": COUNT, "world_size": COUNT, "seconds": NUMBER,
            "device": TEXT, "train_cases": ARRAY, "val_cases": ARRAY, "metrics": TABLE,
            "exported": TEXT}
RESUME_OPTIONAL = ("seed", "world_size", "seconds", "device", "train_cases", "val_cases",
                   "metrics", "exported")


def check_model(path: str | os.PathLike, checkpoint: dict) -> None:
    """The fields :func:`core.inference.load_model` reads: the top level, ``model`` (with its
    ``velocity``, or the ``alpha`` of configs written before velocity spaces, and ``prior``),
    ``spacing`` (positive mm per axis), finite ``state_dict`` tensors."""
    _fields(path, "", checkpoint, TOP, optional=("prior", "format", "version"))
    model = checkpoint["model"]
    legacy = "alpha" in model and "velocity" not in model
    _fields(path, "model", model, MODEL,
            optional=(*MODEL_OPTIONAL, "velocity" if legacy else "alpha"))
    if not legacy:
        _fields(path, "model.velocity", model["velocity"], VELOCITY)
    _prior(path, "model.prior", model["prior"])
    if checkpoint.get("prior") is not None:
        _prior(path, "prior", checkpoint["prior"])
    spacing = checkpoint["spacing"]
    if len(spacing) != model["ndim"] or not all(
        _is(s, NUMBER) and math.isfinite(s) and s > 0 for s in spacing
    ):
        raise CheckpointError(f"{path}: field 'spacing' must be {model['ndim']} positive numbers "
                              f"(mm per axis), got {_show(spacing)}")
    for name, tensor in checkpoint["state_dict"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: field 'state_dict.{name}' must be a tensor, got "
                                  f"{type(tensor).__name__}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: weight 'state_dict.{name}' holds {bad} NaN/Inf "
                                  "value(s): the checkpoint is of a diverged run or damaged")


def check_training(path: str | os.PathLike, checkpoint: dict, defaults: Mapping,
                   optional: tuple[str, ...] = ()) -> dict:
    """The training state of a checkpoint to resume (``training``), its ``config`` checked
    against ``defaults`` (``TrainConfig().to_dict()``: every key but ``optional``, a value of
    the same type)."""
    training = checkpoint.get("training")
    if isinstance(training, dict) and "optimizer" not in training:
        raise CheckpointError(
            f"{path} has no optimizer state (an exported model); it cannot be resumed")
    _fields(path, "training", training, TRAINING, optional=RESUME_OPTIONAL)
    if training["step"] < 0:
        raise CheckpointError(f"{path}: field 'training.step' must be >= 0, got "
                              f"{training['step']}")
    config = {key: _default_types(value) for key, value in defaults.items()}
    _fields(path, "training.config", training["config"], config, optional)
    return training


# --------------------------------------------------------------------------------------------
# helpers


def _fields(path, where: str, data: object, fields: Mapping[str, Types],
            optional: tuple[str, ...] = ()) -> None:
    """``data`` is a dict with every key of ``fields`` (but ``optional``), no other, each of
    its allowed types."""
    name = where or "the checkpoint"
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: field {name!r} must be a dict, got "
                              f"{type(data).__name__} {_show(data)}")
    prefix = f"{where}." if where else ""
    missing = [key for key in fields if key not in data and key not in optional]
    if missing:
        raise CheckpointError(f"{path}: field '{prefix}{missing[0]}' is missing")
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise CheckpointError(f"{path}: field '{prefix}{unknown[0]}' is unknown to this "
                              "napari-difftt")
    for key, value in data.items():
        if not _is(value, fields[key]):
            allowed = " or ".join("None" if t is None else t.__name__ for t in fields[key])
            raise CheckpointError(f"{path}: field '{prefix}{key}' must be {allowed}, got "
                                  f"{type(value).__name__} {_show(value)}")


def _prior(path, where: str, prior: dict) -> None:
    kind = prior.get("type")
    if kind not in PRIORS:
        raise CheckpointError(f"{path}: field '{where}.type' must be one of {sorted(PRIORS)}, "
                              f"got {_show(kind)}")
    _fields(path, where, prior, PRIORS[kind])


def _is(value: object, types: Types) -> bool:
    for allowed in types:
        if allowed is None:
            if value is None:
                return True
        elif allowed is bool or not isinstance(value, bool):
            if allowed is float and isinstance(value, int | float):
                return True
            if isinstance(value, allowed):
                return True
    return False


def _default_types(default: object) -> Types:
    """The types a training config value may have, from its default."""
    if default is None:  # an optional setting (a path, a budget, a tri-state switch)
        return (bool, int, float, str, None)
    if isinstance(default, bool):
        return FLAG
    if isinstance(default, list | tuple):
        return ARRAY
    return NUMBER if isinstance(default, float) else (type(default),)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"
