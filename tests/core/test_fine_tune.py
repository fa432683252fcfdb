"""Trainer: sparse labels fit the prior, warm start from a checkpoint, time budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.models import segmentation_loss
from napari_difftt.core.slices import (
    evenly_spaced_slices,
    fit_to_slices,
    image_mask_targets,
    image_segmentation_targets,
    paint,
    painted_slices,
)
from napari_difftt.core.train import TrainConfig, Trainer
from napari_difftt.core.train.config import FINE_TUNE_SMOOTHNESS, FRESH_SMOOTHNESS
from napari_difftt.errors import AnnotationError, IncompatibleCheckpoint

SHAPE = (16, 32, 32)


def _sample(seed: int, slices: int | None = None, painted: bool = False) -> Sample:
    phantom = make_phantom(SHAPE, seed=seed)
    labels = phantom.labels
    if slices is not None:
        labels = paint(labels, evenly_spaced_slices(labels, slices))
        if not painted:
            labels = painted_slices(labels, 0).labels
    return Sample(normalise_intensity(phantom.image), labels, phantom.spacing, f"case{seed}")


def _config(tmp_path, name="model.pt", **changes) -> TrainConfig:
    settings = dict(kind="bch", iterations=2, patch_size=(16, 16, 16), width=4, pieces=2,
                    device="cpu", seed=1, lr=1e-3, checkpoint=str(tmp_path / name))
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("init")
    Trainer(_config(folder, "first.pt"), [_sample(0)]).run()
    return str(folder / "first.pt")


def test_sparse_labels_fit_the_prior_to_their_slices(tmp_path):
    sample = _sample(4, slices=3)
    trainer = Trainer(_config(tmp_path, iterations=1, prior="fixed"), [sample])
    trainer.run()
    expected = fit_to_slices(sample.labels, 0, sample.spacing)  # fresh: the slices alone
    assert trainer.config.image_depth is False and trainer.config.image_mask is False
    assert trainer.config.smoothness == FRESH_SMOOTHNESS == trainer.model.smoothness  # fresh
    assert trainer.train[0].mask_targets is None
    np.testing.assert_allclose(trainer.model.prior.mean.detach(), expected.mean, atol=1e-5)
    np.testing.assert_allclose(trainer.model.prior.covariance.detach(), expected.covariance,
                               atol=1e-5)
    assert trainer.model.prior.mean.abs().max() > 0.05  # not the centred fallback


def test_painted_axis_turns_painted_labels_into_slices(tmp_path):
    painted = _sample(2, slices=1, painted=True)
    trainer = Trainer(_config(tmp_path, painted_axis=0), [painted])
    labels = trainer.train[0].labels
    assert (labels == 255).sum() == (SHAPE[0] - 1) * 32 * 32  # all but the painted slice
    empty = Sample(painted.image, np.zeros(SHAPE, np.uint8), painted.spacing, "blank")
    with pytest.raises(AnnotationError, match="labels of 'blank': nothing is painted"):
        Trainer(_config(tmp_path, painted_axis=0), [empty])


def test_init_warm_starts_the_network_and_refits_the_prior(tmp_path, trained):
    first = torch.load(trained, weights_only=True)
    sample = _sample(7, slices=3)
    config = _config(tmp_path, init=trained, iterations=1, lr=1e-12, prior="fixed")
    trainer = Trainer(config, [sample])
    trainer.run()
    for key, value in trainer.model.state_dict().items():
        if key.startswith("net."):
            torch.testing.assert_close(value, first["state_dict"][key], atol=1e-6, rtol=0)
    # fine-tuning re-fits the prior to the slices, as deep as the organ in the image
    refit = fit_to_slices(sample.labels, 0, sample.spacing, image=sample.image)
    slices_only = fit_to_slices(sample.labels, 0, sample.spacing)
    np.testing.assert_allclose(trainer.model.prior.mean.detach(), refit.mean, atol=1e-5)
    np.testing.assert_allclose(trainer.model.prior.covariance.detach(), refit.covariance,
                               atol=1e-5)
    assert refit.covariance[0, 0] > slices_only.covariance[0, 0] + 1e-3
    assert trainer.config.image_depth is True  # recorded in the checkpoint as decided
    # fine-tuning penalises λ‖∇u‖² (the bundled model was trained with λ = 0)
    assert trainer.config.smoothness == FINE_TUNE_SMOOTHNESS == trainer.model.smoothness > 0
    # three slices: the pose mask learns from them alone (docs/RESULTS.md)
    assert trainer.config.image_mask is True and trainer.train[0].mask_targets is None
    assert trainer.config.image_segmentation is True
    assert trainer.train[0].segmentation_targets is None
    forced = Trainer(_config(tmp_path, "forced.pt", init=trained, image_depth=False,
                             prior="fixed", iterations=1, lr=1e-12), [sample])
    forced.run()
    np.testing.assert_allclose(forced.model.prior.covariance.detach(), slices_only.covariance,
                               atol=1e-5)
    assert forced.config.image_mask is False and forced.config.image_segmentation is False
    explicit = Trainer(_config(tmp_path, "explicit.pt", init=trained, smoothness=0.0), [sample])
    assert explicit.config.smoothness == 0.0
    with pytest.raises(ValueError, match="smoothness must be >= 0"):
        TrainConfig(smoothness=-1.0)
    assert TrainConfig.from_dict({"kind": "bch"}).image_depth is False  # recorded before it
    assert TrainConfig.from_dict({"kind": "bch"}).image_mask is False
    assert TrainConfig.from_dict({"kind": "bch"}).image_segmentation is False
    with pytest.raises(ValueError, match="image_segmentation must be True, False or None"):
        TrainConfig(image_segmentation=1)
    with pytest.raises(ValueError, match="image_depth must be True, False or None"):
        TrainConfig(image_depth="yes")
    assert float(trainer.model.prior.beta) == pytest.approx(first["prior"]["beta"])

    kept = Trainer(_config(tmp_path, "kept.pt", init=trained, keep_prior=True, iterations=1,
                           lr=1e-12), [sample])
    kept.run()
    np.testing.assert_allclose(kept.model.prior.mean.detach(), first["prior"]["mean"], atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"kind": "unet"}, r"holds a 3D 'bch' model but this run trains a 3D 'unet' model"),
    ({"patch_size": (16, 16)}, r"holds a 3D 'bch' model but this run trains a 2D 'bch' model"),
])
def test_init_of_another_kind_or_dimensionality_is_refused(tmp_path, trained, changes, message):
    config = _config(tmp_path, "never.pt", init=trained, **changes)
    with pytest.raises(IncompatibleCheckpoint, match=message):
        Trainer(config, [_sample(1) if len(config.patch_size) == 3 else _flat()])
    assert not (tmp_path / "never.pt").exists()


def _flat() -> Sample:
    phantom = make_phantom((32, 32), seed=0)
    return Sample(normalise_intensity(phantom.image), phantom.labels, phantom.spacing, "flat")


@pytest.mark.parametrize("minutes", [0, -1.0, math.inf, math.nan])
def test_a_time_budget_must_be_positive(minutes):
    with pytest.raises(ValueError, match="minutes must be a positive number"):
        TrainConfig(minutes=minutes)


def test_keep_prior_needs_init():
    with pytest.raises(ValueError, match="keep_prior needs init"):
        TrainConfig(keep_prior=True)


class _Clock:
    """A clock on which every training step takes one second."""

    def __init__(self) -> None:
        self.calls = 0

    def perf_counter(self) -> float:
        self.calls += 1
        return self.calls // 2  # start and end of a step: one second apart


def test_the_time_budget_ends_the_run_and_anneals_lr_over_it(tmp_path, monkeypatch):
    from napari_difftt.core.train import trainer as module

    config = _config(tmp_path, iterations=10_000, minutes=5 / 60)  # five one-second steps
    trainer = Trainer(config, [_sample(3)])
    monkeypatch.setattr(module, "time", _Clock())
    events, rates = [], []
    for event in trainer.events():
        events.append(event)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.fraction for e in events] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert events[-1].checkpoint is not None
    before = [0.0, 0.2, 0.4, 0.6, 0.8]  # progress when each step started
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * f)) for f in before]
    np.testing.assert_allclose(rates, expected, rtol=1e-9)


def test_iterations_end_a_run_before_its_time_budget(tmp_path):
    trainer = Trainer(_config(tmp_path, iterations=3, minutes=60.0), [_sample(3)])
    result = trainer.run()
    assert result.step == 3 and not result.stopped


def test_one_slice_teaches_the_pose_mask_and_the_segmentation_the_organ_in_the_image(
        tmp_path, trained, monkeypatch):
    from napari_difftt.core.train import trainer as module

    seen = []

    def recording(probability, target, ignore_value=255):
        seen.append(int((target != ignore_value).sum()))
        return segmentation_loss(probability, target, ignore_value)

    monkeypatch.setattr(module, "segmentation_loss", recording)
    sample = _sample(7, slices=1)
    trainer = Trainer(_config(tmp_path, init=trained, iterations=1, mirror=False,
                              patch_size=SHAPE), [sample])  # the whole volume in the patch
    targets = image_mask_targets(sample.labels, sample.image)
    assert targets is not None
    extra = image_segmentation_targets(targets, sample.labels)
    np.testing.assert_array_equal(trainer.train[0].mask_targets, targets)
    np.testing.assert_array_equal(trainer.train[0].segmentation_targets, extra)
    assert trainer.config.image_segmentation is True  # follows image_mask
    trainer.run()
    labelled, off_slice, taught = seen
    assert labelled == (sample.labels != 255).sum()
    assert off_slice == (extra != 255).sum() > labelled  # the segmentation, off the slice
    assert taught == (targets != 255).sum() > off_slice + labelled  # the pose mask: no margin
    seen.clear()
    Trainer(_config(tmp_path, "pose.pt", init=trained, iterations=1, mirror=False,
                    patch_size=SHAPE, image_segmentation=False), [sample]).run()
    assert seen == [labelled, taught]
    seen.clear()
    alone = Trainer(_config(tmp_path, "seg.pt", init=trained, iterations=1, mirror=False,
                            patch_size=SHAPE, image_mask=False, image_segmentation=True),
                    [sample])
    assert alone.train[0].mask_targets is None
    alone.run()
    assert seen == [labelled, off_slice, labelled]
    seen.clear()
    Trainer(_config(tmp_path, "off.pt", init=trained, iterations=1, mirror=False,
                    patch_size=SHAPE, image_mask=False), [sample]).run()
    assert seen == [labelled, labelled]


def test_a_fine_tune_reads_its_init_in_the_runs_velocity_space(tmp_path):
    from napari_difftt.core.flow.velocity import DEFAULT_SPACE, VelocitySpace
    from napari_difftt.core.io import load_checkpoint
    from napari_difftt.core.train.config import FINE_TUNE_BOUND

    coarse = Trainer(_config(tmp_path, "coarse.pt", velocity_factor=4, iterations=1),
                     [_sample(0)]).run().checkpoint
    assert load_checkpoint(coarse)["model"]["velocity"] == VelocitySpace(
        "bspline", 4, 4, 0.0, DEFAULT_SPACE.bound).to_dict()
    logs = []
    tuned = Trainer(_config(tmp_path, init=str(coarse), iterations=1, lr=1e-12),
                    [_sample(3, slices=1)], log=logs.append)
    saved = load_checkpoint(tuned.run().checkpoint)
    expected = VelocitySpace("bspline", 2, 2, 0.0, FINE_TUNE_BOUND)  # measured: docs/RESULTS.md
    assert tuned.model.velocity_space == expected
    assert saved["model"]["velocity"] == expected.to_dict()
    assert saved["training"]["config"]["alpha"] == FINE_TUNE_BOUND  # recorded as resolved
    assert any(f"velocities bspline, factor 2, lattice 2, bound {FINE_TUNE_BOUND:g} voxels (the "
               "init's: bspline, factor 4, lattice 4, bound 16 voxels)" in line for line in logs)
    first = load_checkpoint(coarse)["state_dict"]
    for key, value in tuned.model.state_dict().items():  # the same weights, read anew
        if key.startswith("net."):
            torch.testing.assert_close(value, first[key], atol=1e-6, rtol=0)
    explicit = Trainer(_config(tmp_path, "explicit.pt", init=str(coarse), alpha=12.0,
                               velocity_lattice=4, iterations=1), [_sample(3, slices=1)])
    explicit.run()
    assert explicit.model.velocity_space == VelocitySpace("bspline", 2, 4, 0.0, 12.0)
    assert TrainConfig().velocity_space().bound == DEFAULT_SPACE.bound  # a fresh model: 16
    assert TrainConfig().to_dict()["alpha"] == DEFAULT_SPACE.bound


def test_a_u_net_fine_tune_has_no_velocity_space_to_change(tmp_path):
    unet = Trainer(_config(tmp_path, "unet.pt", kind="unet", iterations=1), [_sample(0)])
    init = unet.run().checkpoint
    logs = []
    tuned = Trainer(_config(tmp_path, init=str(init), kind="unet", iterations=1),
                    [_sample(3, slices=1)], log=logs.append)
    tuned.run()
    assert tuned.model.velocity_space == unet.model.velocity_space
    assert not any("velocities" in line for line in logs)


@pytest.mark.parametrize(("changes", "message"), [
    ({"tune": "encoder"}, r"tune must be one of \('all', 'heads'\)"),
    ({"tune": "heads"}, "tune='heads' needs init and a flow model"),
])
def test_tune_names_a_known_part_and_heads_needs_a_warm_start(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_a_unet_fine_tune_cannot_train_heads_alone(tmp_path, trained):
    with pytest.raises(ValueError, match="needs init and a flow model"):
        _config(tmp_path, init=trained, kind="unet", tune="heads")


def test_tuning_the_heads_alone_leaves_the_unet_as_it_was(tmp_path, trained):
    """tune='heads': the U-Net's weights are those of the init after training; the velocity
    head, the pose mask head and the prior move; the optimizer holds only those."""
    init = torch.load(trained, map_location="cpu", weights_only=False)["state_dict"]
    trainer = Trainer(_config(tmp_path, init=trained, tune="heads", iterations=3, lr=1e-2),
                      [_sample(3, slices=1)])
    trainer.run()
    state = trainer.model.state_dict()
    frozen = [k for k in init if k.startswith("net.") and not k.startswith("net.head.")]
    assert frozen and all(torch.equal(state[k], init[k]) for k in frozen)
    assert not torch.equal(state["net.head.weight"], init["net.head.weight"])
    assert not torch.equal(state["pose_head.head.weight"], init["pose_head.head.weight"])
    trained_names = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained_names and all(not n.startswith("net.") or n.startswith("net.head.")
                                 for n in trained_names)
    optimised = sum(p.numel() for group in trainer.optimizer.param_groups
                    for p in group["params"])
    assert optimised == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
