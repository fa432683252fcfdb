"""``napari-difftt calibrate``: the threshold read off labelled volumes, written into a copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_difftt.cli import main
from napari_difftt.core.data import load_nifti_folder, write_phantom_dataset
from napari_difftt.core.inference import load_model
from napari_difftt.core.io import load_checkpoint, read_nifti, write_nifti
from napari_difftt.core.train import TrainConfig, Trainer
from napari_difftt.core.train.calibration import THRESHOLDS, calibrated_threshold, level_dice

SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_train=1, n_test=2,
                                 shape=SHAPE, seed=0)


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    """A bch model trained for two steps and left at ½ (written before calibration, say)."""
    config = TrainConfig(kind="bch", iterations=2, patch_size=SHAPE, width=4, pieces=2,
                         device="cpu", seed=0, calibrate=False,
                         checkpoint=str(tmp_path_factory.mktemp("model") / "model.pt"))
    return Trainer(config, load_nifti_folder(dataset / "imagesTr", dataset / "labelsTr")).run(
    ).checkpoint


def _argv(dataset, checkpoint, out, *extra) -> list[str]:
    return ["calibrate", "--checkpoint", str(checkpoint), "--images", str(dataset / "imagesTs"),
            "--labels", str(dataset / "labelsTs"), "--out", str(out), "--device", "cpu", *extra]


def test_calibrate_writes_the_best_level_and_keeps_the_weights(dataset, checkpoint, tmp_path,
                                                               capsys):
    out = tmp_path / "calibrated.pt"
    assert main(_argv(dataset, checkpoint, out)) == 0
    samples = load_nifti_folder(dataset / "imagesTs", dataset / "labelsTs")
    original = load_model(checkpoint, device="cpu").model
    expected = calibrated_threshold(original, samples)
    dice, names = level_dice(original, samples)
    assert names == [s.name for s in samples] and expected in THRESHOLDS
    assert dice[THRESHOLDS.index(expected)] == dice.max()
    calibrated = load_checkpoint(out)
    assert calibrated["model"]["threshold"] == expected
    record = calibrated["training"]["metrics"]["calibration"]
    assert record["threshold"] == expected and record["volumes"] == names
    np.testing.assert_allclose(record["dice"], dice)
    before = load_checkpoint(checkpoint)["state_dict"]
    for key, tensor in calibrated["state_dict"].items():
        assert torch.equal(tensor, before[key])
    assert load_checkpoint(checkpoint)["model"]["threshold"] == 0.5  # the input is left alone
    printed = capsys.readouterr().out
    assert f"threshold 0.5 → {expected:g}" in printed and "← chosen" in printed


def test_calibrate_refuses_an_existing_output_and_labels_without_organ(dataset, checkpoint,
                                                                       tmp_path, capsys):
    assert main(_argv(dataset, checkpoint, checkpoint)) == 2  # itself, without --overwrite
    assert "exists; pass --overwrite" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (dataset / "labelsTs").glob("*.nii.gz"):
        labels = read_nifti(path)
        write_nifti(empty / path.name, np.zeros_like(labels.array), labels, labels=True)
    argv = _argv(dataset, checkpoint, tmp_path / "out.pt")
    argv[argv.index("--labels") + 1] = str(empty)
    assert main(argv) == 2
    assert "holds organ voxels (label 1)" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_calibrate_refuses_volumes_of_the_other_dimensionality(tmp_path, checkpoint, capsys):
    flat = write_phantom_dataset(tmp_path / "flat", n_train=1, n_test=1, shape=(32, 32), seed=0)
    assert main(_argv(flat, checkpoint, tmp_path / "out.pt")) == 2
    assert "is a 3D model but" in capsys.readouterr().err
