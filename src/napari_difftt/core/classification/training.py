"""Training and testing the spatial-transformer classifiers (the paper's Table 1 protocol).

:func:`train_classifier` trains one :func:`.stn.build_classifier` model with Adam on
mini-batches in a seeded order and tests it (:func:`evaluate_classifier`: accuracy and the % of
test pixels whose predicted transform folds); :func:`summarise_runs` turns repeated runs into
means and sample standard deviations. ``napari-difftt stn-bench`` only parses and prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..flow import folding_fraction
from ..flow.checks import check_count
from .stn import MODEL_LABELS, build_classifier

__all__ = ["EVAL_BATCH", "Schedule", "evaluate_classifier", "summarise_runs", "train_classifier"]

EVAL_BATCH = 500  # test images per forward pass


@dataclass(frozen=True)
class Schedule:
    """How one classifier is trained: epochs over the training set, Adam's lr, the batch size
    and the seed of the initialisation and the batch order."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            check_count(name, getattr(self, name))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive learning rate, got {self.lr!r}")


def train_classifier(
    name: str,
    train: Sequence[torch.Tensor],
    test: Sequence[torch.Tensor],
    classes: int,
    schedule: Schedule,
    *,
    log: Callable[[str], None] | None = None,
    label: str | None = None,
) -> dict:
    """Train model ``name`` on ``train`` = (images ``(N, C, *S)``, labels ``(N,)``) and test it.

    Returns :func:`evaluate_classifier`'s figures plus ``seconds`` (training time), ``parameters``
    and ``transformer_parameters``. ``log`` gets one line per epoch and one for the test, each
    starting with ``label`` (default ``name``). RuntimeError if the loss diverges.
    """
    say = log if log is not None else (lambda message: None)
    label = name if label is None else label
    torch.manual_seed(schedule.seed)
    images, labels = train
    device = images.device
    model = build_classifier(name, tuple(images.shape[2:]), images.shape[1], classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    order = torch.Generator().manual_seed(schedule.seed)
    started = time.perf_counter()
    for epoch in range(schedule.epochs):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for index in torch.randperm(len(labels), generator=order).split(schedule.batch_size):
            index = index.to(device)
            output = model(images[index])
            loss = model.loss(output, labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total_loss += float(loss.detach()) * len(index)
            correct += int((output.logits.argmax(1) == labels[index]).sum())
            seen += len(index)
        if not math.isfinite(total_loss):
            raise RuntimeError(f"training {name} diverged (loss {total_loss}) in epoch {epoch + 1}")
        say(f"{label} epoch {epoch + 1}/{schedule.epochs}: loss {total_loss / seen:.4f}, "
            f"train accuracy {100 * correct / seen:.2f}%, {time.perf_counter() - started:.0f} s")
    seconds = time.perf_counter() - started
    figures = evaluate_classifier(model, test)
    say(f"{label}: test accuracy {figures['accuracy']:.2f}%"
        + ("" if figures["folding"] is None else
           f", det J ≤ 0 at {figures['folding']:.3f}% (central) / "
           f"{figures['folding_digital']:.3f}% (digital) of pixels"))
    transformer = model.transformer
    return {
        **figures,
        "seconds": seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "transformer_parameters": 0 if transformer is None else sum(
            p.numel() for p in transformer.parameters()
        ),
    }


def evaluate_classifier(model: torch.nn.Module, test: Sequence[torch.Tensor]) -> dict:
    """``{"accuracy"}`` (% of ``test`` = (images, labels) right) and ``{"folding",
    "folding_digital"}``: mean % of pixels with det J ≤ 0 (central differences, digital test),
    None for a model without a transformer."""
    images, labels = test
    model.eval()
    correct, central, digital = 0, 0.0, 0.0
    with torch.no_grad():
        for batch, truth in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
            output = model(batch)
            correct += int((output.logits.argmax(1) == truth).sum())
            if output.transform is not None:
                displacement = output.transform.displacement
                central += float(folding_fraction(displacement, "central").sum())
                digital += float(folding_fraction(displacement, "digital").sum())
    count = len(labels)
    has_transform = model.transformer is not None
    return {
        "accuracy": 100.0 * correct / count,
        "folding": 100.0 * central / count if has_transform else None,
        "folding_digital": 100.0 * digital / count if has_transform else None,
    }


def summarise_runs(name: str, runs: list[dict]) -> dict:
    """One row for model ``name``: its label and parameter counts, mean and sample std (None
    with one run) of accuracy and folding, mean training seconds, and the ``runs`` themselves."""

    def mean_std(key: str) -> tuple[float | None, float | None]:
        values = [run[key] for run in runs]
        if values[0] is None:
            return None, None
        mean = sum(values) / len(values)
        if len(values) == 1:
            return mean, None
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    accuracy, folding = mean_std("accuracy"), mean_std("folding")
    digital = mean_std("folding_digital")
    return {
        "model": name, "label": MODEL_LABELS[name],
        "parameters": runs[0]["parameters"],
        "transformer_parameters": runs[0]["transformer_parameters"],
        "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1],
        "folding_mean": folding[0], "folding_std": folding[1],
        "folding_digital_mean": digital[0], "folding_digital_std": digital[1],
        "train_seconds": sum(run["seconds"] for run in runs) / len(runs),
        "runs": runs,
    }
