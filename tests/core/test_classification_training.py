"""The classifier training loop of the rotated-digit study, without the command around it."""

from __future__ import annotations

import math

import pytest
import torch

from napari_difftt.core.classification.training import (
    Schedule,
    evaluate_classifier,
    summarise_runs,
    train_classifier,
)


def _bars(count: int, seed: int) -> list[torch.Tensor]:
    """28×28 images with a bright bar whose row is the class (0 … 3)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4
    images = 0.1 * torch.rand(count, 1, 28, 28, generator=generator)
    for image, label in zip(images, labels, strict=True):
        image[0, 4 + 5 * label:7 + 5 * label, 4:24] = 1.0
    return [images, labels]


def test_training_learns_the_bars_and_reports_its_figures():
    lines = []
    figures = train_classifier("cnn", _bars(64, 0), _bars(32, 1), 4, Schedule(4, 16, 3e-3, seed=2),
                               log=lines.append, label="cnn run 1/1")
    assert figures["accuracy"] > 60 and figures["folding"] is None  # chance is 25 %
    assert figures["parameters"] > 0 and figures["transformer_parameters"] == 0
    assert [line.split(":")[0] for line in lines] == [
        "cnn run 1/1 epoch 1/4", "cnn run 1/1 epoch 2/4", "cnn run 1/1 epoch 3/4",
        "cnn run 1/1 epoch 4/4", "cnn run 1/1"]
    again = train_classifier("cnn", _bars(64, 0), _bars(32, 1), 4, Schedule(4, 16, 3e-3, seed=2))
    assert again["accuracy"] == figures["accuracy"]  # seeded: the same run


def test_a_transformer_reports_its_folding():
    model_figures = train_classifier("diffeo", _bars(16, 0), _bars(8, 1), 4, Schedule(1, 8))
    assert 0 <= model_figures["folding"] <= 100 and model_figures["transformer_parameters"] > 0
    from napari_difftt.core.classification.stn import build_classifier

    untrained = build_classifier("diffeo", (28, 28), 1, 4)
    assert evaluate_classifier(untrained, _bars(8, 3))["folding_digital"] == 0.0  # the identity


def test_summaries_give_sample_spread_only_with_repeats():
    run = {"accuracy": 80.0, "folding": None, "folding_digital": None, "seconds": 2.0,
           "parameters": 10, "transformer_parameters": 0}
    one = summarise_runs("cnn", [run])
    assert one["accuracy_mean"] == 80.0 and one["accuracy_std"] is None
    two = summarise_runs("cnn", [run, {**run, "accuracy": 90.0, "seconds": 4.0}])
    assert two["accuracy_mean"] == 85.0 and two["accuracy_std"] == pytest.approx(math.sqrt(50))
    assert two["folding_mean"] is None and two["train_seconds"] == 3.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"epochs": 1, "batch_size": True}, "batch_size must be a positive int"),
    ({"epochs": 1, "lr": float("nan")}, "lr must be a positive learning rate"),
])
def test_schedule_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)
