"""``train --init/--minutes/--keep-prior/--painted-axis``: bad input refused with nothing written,
a warm-started run on painted slices that ends at its time budget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.cli import main
from napari_difftt.core.data import write_phantom_dataset
from napari_difftt.core.inference import default_checkpoint
from napari_difftt.core.io import load_checkpoint, read_nifti, write_nifti
from napari_difftt.core.slices import evenly_spaced_slices, paint

TINY = ["--patch-size", "16", "16", "16", "--device", "cpu", "--quiet", "--threads", "1"]


@pytest.fixture
def painted_data(tmp_path):
    """One 16×32×32 phantom whose label file is painted on one axial slice (0 elsewhere)."""
    root = write_phantom_dataset(tmp_path / "data", n_train=1, n_test=0, shape=(16, 32, 32))
    path = next((root / "labelsTr").iterdir())
    labels = read_nifti(path)
    write_nifti(path, paint(labels.array, evenly_spaced_slices(labels.array, 1)),
                affine=labels.affine, labels=True, overwrite=True)
    return root, path


def _run(capsys, *argv) -> tuple[int, str]:
    status = main(["train", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--model", "unet", "--init", "BUNDLED"],
     "holds a 3D 'bch' model but this run trains a 3D 'unet' model"),
    (["--minutes", "0"], "minutes must be a positive number"),
    (["--minutes", "-1"], "minutes must be a positive number"),
    (["--keep-prior"], "keep_prior needs init"),
    (["--init", "BUNDLED", "--resume", "BUNDLED"], "either --resume CKPT .* or --init CKPT"),
])
def test_bad_options_are_refused_and_nothing_is_written(painted_data, tmp_path, capsys, extra,
                                                        message):
    import re

    root, _ = painted_data
    out = tmp_path / "never.pt"
    extra = [str(default_checkpoint(3)) if item == "BUNDLED" else item for item in extra]
    status, err = _run(capsys, "--data", str(root), "--out", str(out), *TINY, *extra)
    assert status == 2 and re.search(message, err), err
    assert not out.exists()


def test_painted_labels_with_nothing_painted_are_refused(painted_data, tmp_path, capsys):
    root, path = painted_data
    labels = read_nifti(path)
    write_nifti(path, np.zeros_like(labels.array), affine=labels.affine, labels=True,
                overwrite=True)
    out = tmp_path / "never.pt"
    status, err = _run(capsys, "--data", str(root), "--out", str(out), "--painted-axis", "0",
                       *TINY)
    assert status == 2 and "nothing is painted: paint the organ with label 1" in err
    assert not out.exists()


def test_a_warm_start_on_painted_slices_ends_at_its_time_budget(painted_data, tmp_path, capsys):
    """``--init bundled`` names the bundled model of the patches' dimensionality."""
    root, _ = painted_data
    out = tmp_path / "tuned.pt"
    status, err = _run(capsys, "--data", str(root), "--out", str(out), "--painted-axis", "0",
                       "--init", "bundled", "--minutes", "0.02",
                       "--iterations", "100000", *TINY)
    assert status == 0, err
    checkpoint = load_checkpoint(out)
    config = checkpoint["training"]["config"]
    assert config["init"] == str(default_checkpoint(3)) and config["minutes"] == 0.02
    assert 0 < checkpoint["training"]["step"] < 100_000
    assert checkpoint["model"]["width"] == load_checkpoint(default_checkpoint(3))["model"]["width"]
    # fine-tuning teaches the pose mask the organ seen in the image, unless told not to
    assert config["image_depth"] is True and config["image_mask"] is True
    assert config["image_segmentation"] is True
    assert config["smoothness"] == 0.1 == checkpoint["model"]["smoothness"]
    status, err = _run(capsys, "--data", str(root), "--out", str(tmp_path / "plain.pt"),
                       "--painted-axis", "0", "--init", "bundled", "--iterations", "1",
                       "--no-image-mask", "--image-segmentation", *TINY)
    assert status == 0, err
    config = load_checkpoint(tmp_path / "plain.pt")["training"]["config"]
    assert config["image_depth"] is True and config["image_mask"] is False
    assert config["image_segmentation"] is True
