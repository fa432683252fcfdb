"""Whole-volume inference: checkpoints, padding/cropping, the global prior, cancel, memory."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_difftt.core import inference
from napari_difftt.core.data import normalise_intensity
from napari_difftt.core.inference import (
    Cancelled,
    OutOfMemory,
    default_checkpoint,
    estimate_bytes,
    load_model,
    predict_volume,
    spacing_mismatch,
)
from napari_difftt.core.io import CheckpointError, save_checkpoint
from napari_difftt.core.metrics import topology_report
from napari_difftt.core.models import TemplateTransformer
from napari_difftt.core.prior import GeneralisedGaussianPrior
from napari_difftt.errors import SpacingWarning


def _save(path, model, **extra):
    payload = {"model": model.config(), "state_dict": model.state_dict(),
               "spacing": [1.0] * model.ndim, "training": {}, "versions": {}, **extra}
    return save_checkpoint(path, payload)


@pytest.fixture
def bch_checkpoint(tmp_path):
    torch.manual_seed(0)
    prior = GeneralisedGaussianPrior(3, mean=[0.1, -0.1, 0.2], radii=[0.5, 0.4, 0.6], beta=2.0)
    return _save(tmp_path / "bch.pt", TemplateTransformer("bch", ndim=3, prior=prior, width=2))


def test_untrained_flow_model_predicts_the_global_prior_cropped_back(bch_checkpoint):
    loaded = load_model(bch_checkpoint, device="cpu")
    assert loaded.device == torch.device("cpu") and not loaded.model.training
    image = np.random.default_rng(0).random((20, 23, 17)).astype(np.float32) * 300
    prediction = predict_volume(loaded.model, image)
    assert prediction.probability.shape == prediction.prior.shape == (20, 23, 17)
    assert prediction.probability.dtype == np.float32
    assert prediction.segmentation.dtype == np.uint8
    velocity, velocities = prediction.flow.on_image_grid()
    assert prediction.displacement.shape == velocity.shape == (3, 20, 23, 17)
    assert velocities.shape == (4, 3, 20, 23, 17)
    # padding to 32 × 32 × 32 must not move the prior: it is the unpadded volume's function
    expected = loaded.model.prior.on_grid((20, 23, 17))[0, 0].detach().numpy()
    # (to float rounding: the padded grid's index map differs from the unpadded one's)
    np.testing.assert_allclose(prediction.prior, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(prediction.probability, expected, atol=1e-6, rtol=0)
    assert np.mean(prediction.segmentation != (expected > 0.5)) < 1e-3
    assert not prediction.displacement.any()


def test_2d_unet_and_normalisation(tmp_path):
    torch.manual_seed(1)
    model = TemplateTransformer("unet", ndim=2, width=2)
    loaded = load_model(_save(tmp_path / "unet.pt", model), device="cpu")
    image = np.random.default_rng(1).random((30, 33)).astype(np.float32)
    raw = predict_volume(loaded.model, image * 1000 + 5)
    assert raw.displacement is None and raw.flow is None
    already = predict_volume(loaded.model, normalise_intensity(image), normalise=False)
    np.testing.assert_allclose(raw.probability, already.probability, atol=1e-6)
    # a volume smaller than 16 voxels is padded up to 16
    assert predict_volume(loaded.model, image[:7, :9]).probability.shape == (7, 9)


def test_progress_and_cancel(bch_checkpoint):
    model = load_model(bch_checkpoint, device="cpu").model
    image = np.random.default_rng(2).random((16, 16, 16)).astype(np.float32)
    calls = []
    predict_volume(model, image, progress=lambda done, total, message: calls.append((done, total)))
    assert [done for done, _ in calls] == [0, 1, 2, 3, 4] and {t for _, t in calls} == {4}
    polls = []

    def stop_on_second_poll():
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(Cancelled, match="cancelled"):
        predict_volume(model, image, should_stop=stop_on_second_poll)
    assert len(polls) == 2


def test_memory_estimate_refuses_with_the_size_needed(bch_checkpoint):
    model = load_model(bch_checkpoint, device="cpu").model
    image = np.zeros((40, 20, 20), dtype=np.float32)
    need = estimate_bytes(model, (48, 32, 32))
    with pytest.raises(OutOfMemory, match=r"padded to \(48, 32, 32\) needs about .* GiB on cpu"):
        predict_volume(model, image, memory_limit=need - 1)
    assert predict_volume(model, image, memory_limit=need).probability.shape == (40, 20, 20)
    # the estimate grows with the grid and the width
    wider = TemplateTransformer("bch", ndim=3, width=8)
    assert estimate_bytes(wider, (48, 32, 32)) > need
    assert estimate_bytes(model, (96, 32, 32)) == pytest.approx(2 * need, rel=1e-6)


def test_wrong_dimensionality_is_refused(bch_checkpoint):
    model = load_model(bch_checkpoint, device="cpu").model
    with pytest.raises(ValueError, match="must be a 3D array"):
        predict_volume(model, np.zeros((16, 16)))


def test_checkpoint_errors_name_the_file(tmp_path, bch_checkpoint):
    payload = torch.load(bch_checkpoint, weights_only=True)
    payload["model"]["kind"] = "transformer"
    unknown = tmp_path / "unknown.pt"
    save_checkpoint(unknown, payload)  # a valid checksum: the content is what is wrong
    with pytest.raises(CheckpointError, match=r"unknown\.pt holds a model of unknown kind"):
        load_model(unknown)
    newer = tmp_path / "newer.pt"
    torch.save({**torch.load(bch_checkpoint, weights_only=True), "version": 99}, newer)
    with pytest.raises(CheckpointError, match=r"newer\.pt .*newer"):
        load_model(newer)
    mismatch = tmp_path / "mismatch.pt"
    payload = torch.load(bch_checkpoint, weights_only=True)
    payload["model"]["width"] = 4
    save_checkpoint(mismatch, payload)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt does not fit"):
        load_model(mismatch)
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_model(tmp_path / "absent.pt")


def test_default_checkpoint_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", "no_such_model.pt")
    with pytest.raises(FileNotFoundError, match=r"no_such_model\.pt is missing"):
        default_checkpoint()


@pytest.mark.cuda
def test_cuda_prediction_matches_cpu(bch_checkpoint):
    loaded = load_model(bch_checkpoint, device="cuda")
    with torch.no_grad():
        loaded.model.net.head.weight.normal_(std=0.05)
    image = np.random.default_rng(3).random((24, 20, 18)).astype(np.float32)
    gpu = predict_volume(loaded.model, image)
    cpu = predict_volume(loaded.model, image, device="cpu")
    np.testing.assert_allclose(gpu.probability, cpu.probability, atol=1e-3)


def test_every_prediction_carries_its_topology_report(bch_checkpoint, tmp_path):
    """An untrained flow model is the identity: its segmentation is the prior's one ellipsoid."""
    loaded = load_model(bch_checkpoint, device="cpu")
    image = np.random.default_rng(0).random((20, 23, 17)).astype(np.float32)
    report = predict_volume(loaded.model, image).topology
    assert report == topology_report(predict_volume(loaded.model, image).segmentation,
                                     np.zeros((3, 20, 23, 17), np.float32))
    assert report["components"] == report["components_full"] == 1
    assert report["folding_digital"] == report["folding_central"] == 0.0 and report["holds"]
    assert predict_volume(loaded.model, image, topology=False).topology is None
    unet = load_model(_save(tmp_path / "u.pt", TemplateTransformer("unet", ndim=2, width=2)))
    flat = predict_volume(unet.model, image[0]).topology
    assert flat["folding_digital"] is None and flat["connectivity"] == [4, 8]


def test_spacing_far_from_the_training_spacing_warns(bch_checkpoint):
    """A 1 mm model on 0.8 × 0.8 × 3 mm voxels ran without a word."""
    loaded = load_model(bch_checkpoint, device="cpu")
    image = np.zeros((16, 16, 16), np.float32)
    with pytest.warns(SpacingWarning, match=r"0\.8 × 0\.8 × 3 mm voxels but the model was "
                                            r"trained on 1 × 1 × 1 mm"):
        predict_volume(loaded.model, image, spacing=(0.8, 0.8, 3.0), model_spacing=(1, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpacingWarning)
        predict_volume(loaded.model, image, spacing=(1.15, 0.85, 1.0), model_spacing=(1, 1, 1))
    assert spacing_mismatch((1.0, 1.0), (1.0, 1.0, 1.0)) is None  # unknown: nothing to compare
    assert spacing_mismatch((1.21, 1.0), (1.0, 1.0)) is not None


def test_velocities_stay_coarse_and_upsample_on_demand_as_before(bch_checkpoint):
    """The lazy CoarseFlow gives exactly what the eager upsampling of the whole padded grid,
    then cropped, gave."""
    loaded = load_model(bch_checkpoint, device="cpu")
    with torch.no_grad():
        loaded.model.net.head.weight.normal_(std=0.5)  # a model whose flow moves things
    image = np.random.default_rng(1).random((20, 23, 17)).astype(np.float32)
    prediction = predict_volume(loaded.model, image)
    flow, space = prediction.flow, loaded.model.velocity_space
    assert flow.velocities.shape == (4, 3, *space.coarse_shape((32, 32, 32)))
    padded = np.pad(normalise_intensity(image), [(6, 6), (4, 5), (7, 8)])
    with torch.inference_mode():
        eager = loaded.model(torch.from_numpy(padded)[None, None], offset=(-6, -4, -7),
                             full_shape=image.shape)
        fine = space.to_fine(eager.velocities[0], (32, 32, 32))[..., 6:26, 4:27, 7:24]
        combined = space.to_fine(eager.velocity, (32, 32, 32))[0, :, 6:26, 4:27, 7:24]
    velocity, velocities = flow.on_image_grid()
    np.testing.assert_allclose(velocities, fine.numpy(), atol=1e-6)
    np.testing.assert_allclose(velocity, combined.numpy(), atol=1e-6)
    assert np.abs(velocities).max() > 0.1
