"""fine_tune_curve.py with the U-Net's weights (all but the 1×1 velocity head) at lr × SCALE.

An experiment (session 15), not an option of the trainer: it replaces the trainer's optimizer
after its setup with two parameter groups and scales the first group's cosine:

    D=scripts/experiments/results/session15_malloc/net_lr_curves
    PYTHONPATH=src python $D/curve_scaled.py 0.1 lobed 1 resources/difftt_phantom_bch.pt \\
        --threads 1 --json $D/lobed1_s0.1.json
"""

import math
import runpy
import sys
from pathlib import Path

import torch

from napari_difftt.core.train import trainer

SCALE = float(sys.argv.pop(1))
CURVE = Path(__file__).resolve().parents[3] / "fine_tune_curve.py"
_setup = trainer.Trainer._setup


def setup(self) -> None:
    if self._ready:
        return
    _setup(self)
    network = [p for name, p in self.model.named_parameters() if p.requires_grad
               and name.startswith("net.") and not name.startswith("net.head.")]
    chosen = {id(p) for p in network}
    rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in chosen]
    config = self.config
    self.optimizer = torch.optim.Adam(
        [{"params": network, "scale": SCALE, "lr": config.lr * SCALE},
         {"params": rest, "scale": 1.0}], lr=config.lr, betas=config.betas)
    self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        self.optimizer, T_max=config.iterations, eta_min=0.0)


def follow_budget(self) -> None:
    lr = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * self.fraction))
    for group in self.optimizer.param_groups:
        group["lr"] = lr * group.get("scale", 1.0)


trainer.Trainer._setup = setup
trainer.Trainer._follow_budget = follow_budget
sys.argv = [str(CURVE), *sys.argv[1:]]
runpy.run_path(str(CURVE), run_name="__main__")
