"""Training a template transformer: settings, the trainer, checkpoints, data parallelism.

:mod:`.config` (:class:`TrainConfig`: defaults and validation), :mod:`.trainer` (:class:`Trainer`,
its events and result), :mod:`.checkpoint` (what a checkpoint holds, the slim export) and
:mod:`.distributed` (``torchrun`` behind one helper).
"""

from .checkpoint import export_checkpoint, slim_checkpoint, versions
from .config import DEFAULTS, KINDS, TrainConfig
from .trainer import Trainer, TrainEvent, TrainResult, build_model, prior_masks

__all__ = [
    "DEFAULTS",
    "KINDS",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "Trainer",
    "build_model",
    "export_checkpoint",
    "prior_masks",
    "slim_checkpoint",
    "versions",
]
