"""CLI: options checked before any data is read, --resume judged by what was typed, degenerate
files refused by name, warnings as one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_difftt.cli import main
from napari_difftt.core.data import write_phantom_dataset
from napari_difftt.core.io import read_nifti, write_nifti

TINY = ["--patch-size", "16", "16", "16", "--width", "4", "--pieces", "2", "--device", "cpu",
        "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(root, n_train=1, n_test=1, shape=(16, 16, 16), seed=0)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "bch.pt"
    assert main(["train", "--data", str(dataset), "--iterations", "1", "--out", str(out),
                 *TINY]) == 0
    return out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--prior-beta", "0"], "prior_beta must be a positive number, got 0.0"),
    (["--prior-beta", "nan"], "prior_beta must be a positive number, got nan"),
    (["--patch-size", "12", "12", "12"], r"each a multiple of 16 voxels"),
])
def test_argument_checks_run_before_any_data_is_read(dataset, tmp_path, capsys, monkeypatch,
                                                     extra, message):
    """--threads 0 was accepted; --prior-beta 0/nan and an unusable --patch-size were refused
    only after the data were read."""
    import napari_difftt.core.data as data

    def no_loading(*args, **kwargs):
        raise AssertionError("data were read before the arguments were checked")

    monkeypatch.setattr(data, "load_nifti_folder", no_loading)
    argv = ["train", "--data", str(dataset), "--out", str(tmp_path / "m.pt"), *TINY, *extra]
    assert message in _error(argv, capsys).replace("\\", "")


def test_resume_refuses_every_typed_option_it_does_not_apply(dataset, trained, tmp_path,
                                                             capsys):
    """`--patch-size 64 64 64` on a 16³ checkpoint was ignored without a word because it
    equals the default."""
    argv = ["train", "--data", str(dataset), "--iterations", "2", "--resume", str(trained),
            "--out", str(tmp_path / "more.pt"), "--device", "cpu", "--quiet"]
    message = _error([*argv, "--patch-size", "64", "64", "64", "--lr", "0.0002"], capsys)
    assert "--patch-size 64 64 64 (checkpoint: 16 16 16)" in message
    assert "--lr 0.0002 (checkpoint: 0.0002)" not in message  # typed, but what it holds
    message = _error([*argv, "--train-beta", "--velocity-sigma", "1.0"], capsys)
    assert "--train-beta True (checkpoint: False)" in message
    assert "--velocity-sigma" in message
    assert main([*argv, "--width", "4"]) == 0  # typed with the checkpoint's value: fine


def test_resume_of_a_broken_training_state_names_the_field_and_file(dataset, trained,
                                                                   tmp_path, capsys):
    from napari_difftt.core.io import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(trained)
    checkpoint["training"]["config"]["lr"] = "fast"
    broken = save_checkpoint(tmp_path / "broken.pt", checkpoint)
    message = _error(["train", "--data", str(dataset), "--resume", str(broken), "--out",
                      str(tmp_path / "m.pt"), "--quiet"], capsys)
    assert f"{broken}: field 'training.config.lr' must be float, got str 'fast'" in message


def test_predict_and_train_refuse_a_constant_image_by_name(dataset, trained, tmp_path, capsys):
    """A constant image was segmented as a 718-voxel organ with "topology holds"."""
    blank = write_nifti(tmp_path / "in" / "blank.nii.gz", np.full((16, 16, 16), 7.0))
    message = _error(["predict", "--checkpoint", str(trained), str(blank), "--out",
                      str(tmp_path / "out"), "--quiet"], capsys)
    assert f"{blank} has no contrast: every voxel is 7" in message
    assert not (tmp_path / "out" / "blank_seg.nii.gz").exists()
    images = dataset / "imagesTr"
    case = sorted(images.iterdir())[0]
    write_nifti(tmp_path / "images" / case.name, np.full((16, 16, 16), 7.0),
                like=read_nifti(case))
    message = _error(["train", "--images", str(tmp_path / "images"), "--labels",
                      str(dataset / "labelsTr"), "--iterations", "1", "--out",
                      str(tmp_path / "m.pt"), *TINY], capsys)
    assert f"{tmp_path / 'images' / case.name} has no contrast" in message


def test_a_truncated_displacement_is_named(tmp_path, capsys):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    write_nifti(tmp_path / "labels" / "a.nii.gz", mask, labels=True)
    write_nifti(tmp_path / "pred" / "a_seg.nii.gz", mask, labels=True)
    field = tmp_path / "pred" / "a_displacement.npy"
    np.save(field, np.zeros((3, 8, 8, 8), np.float32))
    field.write_bytes(field.read_bytes()[:-100])
    message = _error(["evaluate", "--pred", str(tmp_path / "pred"), "--labels",
                      str(tmp_path / "labels"), "--quiet"], capsys)
    assert f"cannot read {field}: it is truncated or not a .npy array" in message


def test_a_warning_shown_to_cli_users_is_one_line_of_text(trained, tmp_path):
    """The "no checksum" warning showed a line of Python source under the message."""
    old = tmp_path / "old.pt"
    payload = torch.load(trained, weights_only=True)
    payload.pop("sha256")
    torch.save(payload, old)
    image = write_nifti(tmp_path / "x.nii.gz", np.random.default_rng(0).random((16, 16, 16)))
    done = subprocess.run([sys.executable, "-m", "napari_difftt.cli", "predict", "--checkpoint",
                           str(old), str(image), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "checksum" in line]
    assert lines == [f"warning: {old}: no checksum (written before checkpoints carried a "
                     "SHA-256); loaded without an integrity check — save it again to add one"]
    assert "warnings.warn" not in done.stderr and "UserWarning" not in done.stderr
