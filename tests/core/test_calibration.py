"""The segmentation threshold: the model's level of the probability, calibrated at the end of a
fresh flow run on dense labels, saved, used by predict_volume, 0.5 for older checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.inference import load_model, predict_volume
from napari_difftt.core.io import Volume, load_checkpoint
from napari_difftt.core.models import TemplateTransformer
from napari_difftt.core.prior import GeneralisedGaussianPrior
from napari_difftt.core.train import TrainConfig, Trainer
from napari_difftt.core.train.calibration import THRESHOLDS, calibrated_threshold
from napari_difftt.pipeline import segment

SHAPE = (16, 32, 32)


def _prior_model() -> TemplateTransformer:
    """A bch model whose zero-initialised head leaves the prior unwarped: probability = prior."""
    prior = GeneralisedGaussianPrior(3, covariance=torch.eye(3, dtype=torch.float64) * 0.25)
    return TemplateTransformer("bch", ndim=3, prior=prior, pieces=2, width=4).eval()


def _sample_at_level(model: TemplateTransformer, level: float, seed: int = 0) -> Sample:
    image = np.random.default_rng(seed).random(SHAPE).astype(np.float32)
    probability = predict_volume(model, image, normalise=False, topology=False).probability
    return Sample(image, (probability > level).astype(np.uint8), (1.0,) * 3, f"level{level}")


@pytest.mark.parametrize("level", [0.3, 0.65])
def test_the_calibrated_threshold_is_the_level_the_labels_were_cut_at(level):
    model = _prior_model()
    samples = [_sample_at_level(model, level, seed) for seed in range(2)]
    assert calibrated_threshold(model, samples) == pytest.approx(level)
    assert not model.training  # left in its mode


def test_unlabelled_voxels_do_not_count_and_no_organ_gives_none():
    model = _prior_model()
    sample = _sample_at_level(model, 0.3)
    labels = sample.labels.copy()
    labels[:, :16] = 255  # half the volume unlabelled: the other half still says 0.3
    model.train()
    assert calibrated_threshold(model, [Sample(sample.image, labels, sample.spacing, "half")]
                                ) == pytest.approx(0.3)
    assert model.training
    empty = Sample(sample.image, np.zeros(SHAPE, np.uint8), sample.spacing, "empty")
    assert calibrated_threshold(model, [empty]) is None


def test_predict_volume_segments_above_the_models_threshold():
    model = _prior_model()
    image = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    model.threshold = 0.8
    prediction = predict_volume(model, image, normalise=False)
    np.testing.assert_array_equal(prediction.segmentation, prediction.probability > 0.8)
    assert prediction.topology["components"] == 1  # another level of the same deformed prior


def test_the_threshold_is_part_of_the_models_config_and_old_configs_take_one_half():
    model = _prior_model()
    model.threshold = 0.35
    config = model.config()
    assert TemplateTransformer.from_config(config).threshold == 0.35
    old = {k: v for k, v in config.items() if k != "threshold"}
    assert TemplateTransformer.from_config(old).threshold == 0.5
    for bad in (0.0, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match="threshold must be a probability"):
            TemplateTransformer("bch", ndim=3, threshold=bad)


def _phantoms(count: int, sparse: bool = False) -> list[Sample]:
    out = []
    for seed in range(count):
        phantom = make_phantom(SHAPE, seed=seed)
        labels = phantom.labels.copy()
        if sparse:
            labels[: SHAPE[0] // 2] = 255
            labels[SHAPE[0] // 2 + 1 :] = 255
        out.append(Sample(normalise_intensity(phantom.image), labels, phantom.spacing, f"c{seed}"))
    return out


def _config(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{"kind": "bch", "iterations": 2, "patch_size": SHAPE, "width": 4,
                          "pieces": 2, "device": "cpu", "seed": 0,
                          "checkpoint": str(tmp_path / "model.pt"), **changes})


def test_a_fresh_flow_run_on_dense_labels_calibrates_and_saves_its_threshold(tmp_path):
    samples = _phantoms(2)
    trainer = Trainer(_config(tmp_path), samples)
    assert trainer.config.calibrate is True
    result = trainer.run()
    expected = calibrated_threshold(trainer.model, samples)
    assert trainer.model.threshold == expected and expected in THRESHOLDS
    saved = load_checkpoint(result.checkpoint)
    assert saved["model"]["threshold"] == expected
    assert saved["training"]["config"]["calibrate"] is True
    assert load_model(result.checkpoint, device="cpu").model.threshold == expected
    segmented = segment(Volume(samples[0].image, np.eye(4)), result.checkpoint, device="cpu")
    assert segmented.threshold == expected  # the record says which level made the labels
    np.testing.assert_array_equal(segmented.prediction.segmentation,
                                  segmented.prediction.probability > expected)


def test_with_validation_volumes_the_threshold_is_read_off_them(tmp_path, monkeypatch):
    from napari_difftt.core.train import trainer as module

    seen = []

    def recording(model, samples, ignore_value=255):
        seen.append([s.name for s in samples])
        return 0.45

    monkeypatch.setattr(module, "calibrated_threshold", recording)
    train, val = _phantoms(2), _phantoms(3)[2:]
    trainer = Trainer(_config(tmp_path), train, val)
    trainer.run()
    assert seen == [["c2"]] and trainer.model.threshold == 0.45
    seen.clear()
    Trainer(_config(tmp_path, checkpoint=str(tmp_path / "plain.pt")), train).run()
    assert seen == [["c0", "c1"]]


def test_the_rule_leaves_u_nets_sparse_labels_and_fine_tunes_at_one_half(tmp_path):
    assert Trainer(_config(tmp_path, kind="unet"), _phantoms(1)).config.calibrate is False
    assert Trainer(_config(tmp_path), _phantoms(1, sparse=True)).config.calibrate is False
    first = Trainer(_config(tmp_path, calibrate=False), _phantoms(1)).run()
    tuned = Trainer(_config(tmp_path, init=str(first.checkpoint),
                            checkpoint=str(tmp_path / "tuned.pt")), _phantoms(1))
    assert tuned.config.calibrate is False
    tuned.run()
    assert tuned.model.threshold == 0.5
    assert TrainConfig.from_dict({"kind": "bch"}).calibrate is False  # recorded before it
    with pytest.raises(ValueError, match="calibrate must be True, False or None"):
        TrainConfig(calibrate="yes")


def test_a_warm_start_drops_the_inits_calibrated_level_unless_it_calibrates(tmp_path,
                                                                           monkeypatch):
    from napari_difftt.core.train import trainer as module

    level = iter([0.3, 0.35])  # the init's calibration (the bundled 2D model's), then the tune's
    monkeypatch.setattr(module, "calibrated_threshold", lambda *args, **kwargs: next(level))
    first = Trainer(_config(tmp_path), _phantoms(1)).run().checkpoint
    assert load_model(first, device="cpu").model.threshold == 0.3
    logs = []
    tuned = Trainer(_config(tmp_path, init=str(first), checkpoint=str(tmp_path / "tuned.pt")),
                    _phantoms(1), log=logs.append)
    saved = tuned.run().checkpoint
    assert tuned.model.threshold == 0.5 and load_model(saved, device="cpu").model.threshold == 0.5
    assert any("threshold 0.3 reset to 0.5" in line for line in logs)
    again = Trainer(_config(tmp_path, init=str(first), calibrate=True,
                            checkpoint=str(tmp_path / "again.pt")), _phantoms(1))
    again.run()
    assert again.model.threshold == 0.35
