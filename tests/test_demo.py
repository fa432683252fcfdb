"""``napari-difftt demo`` without a screen: the real CLI in a subprocess writes the
segmentation, the metrics and a picture, and says how the picture was made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage.io import imread

from napari_difftt._sample_data import PHANTOM_3D, PHANTOM_3D_ORIGIN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained width-4 bch model (the bundled one may not exist yet)."""
    sys.path.insert(0, str(Path(__file__).parent / "napari"))
    from difftt_helpers import untrained_checkpoint

    return untrained_checkpoint(tmp_path_factory.mktemp("demo") / "tiny3d.pt", ndim=3)


def _demo(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return subprocess.run([sys.executable, "-m", "napari_difftt.cli", "demo", *args],
                          capture_output=True, text=True, env=env, timeout=500, check=False)


def _check_outputs(out: Path, stdout: str) -> np.ndarray:
    from napari_difftt.core.data import make_phantom
    from napari_difftt.core.metrics import dice

    segmentation = nib.load(out / "phantom_seg.nii.gz")  # the one contract: pipeline.OUTPUTS
    shape, seed, spacing = PHANTOM_3D
    np.testing.assert_allclose(nib.affines.voxel_sizes(segmentation.affine), spacing[::-1])
    np.testing.assert_allclose(segmentation.affine[:3, 3], PHANTOM_3D_ORIGIN[::-1])  # voxel 0
    array = np.asarray(segmentation.dataobj).T
    assert array.shape == shape and array.dtype == np.uint8
    truth = make_phantom(shape, seed=seed, spacing=spacing).labels
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["dice"] == pytest.approx(dice(array, truth))  # measured, not made up
    assert f"Dice: {metrics['dice']:.3f}" in stdout
    assert "components: " in stdout
    picture = imread(out / "demo.png")
    assert picture.ndim == 3 and picture[..., :3].std() > 5  # not a blank image
    return picture


def test_demo_without_a_screen_runs_headless_with_napari(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = _demo("--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no screen found" in result.stdout
    assert "virtual display" in result.stdout and "viewer.screenshot" in result.stdout
    picture = _check_outputs(out, result.stdout)
    assert picture.shape[0] >= 600 and picture.shape[1] >= 1000  # the whole window


def test_demo_montage(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = _demo("--headless", "--montage", "--checkpoint", str(checkpoint), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "slice montage" in result.stdout and "not napari" in result.stdout
    picture = _check_outputs(out, result.stdout)
    from napari_difftt.commands.demo import montage_zoom

    assert picture.shape[0] == (PHANTOM_3D[0][1] + 4) * montage_zoom(PHANTOM_3D[0])


NO_QT = """
import importlib.abc, sys
BLOCKED = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "napari", "magicgui",
           "vispy")

class NoQt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the headless demo must not need it")

sys.meta_path.insert(0, NoQt())
from napari_difftt.cli import main
status = main(sys.argv[1:])
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)))
sys.exit(status)
"""


def test_demo_montage_needs_no_qt_binding_nor_napari(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", NO_QT, "demo", "--headless", "--montage", "--checkpoint",
         str(checkpoint), "--out", str(out)],
        capture_output=True, text=True, timeout=500, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported: []" in result.stdout
    _check_outputs(out, result.stdout)


def test_demo_missing_checkpoint_is_a_clear_error(tmp_path):
    result = _demo("--headless", "--checkpoint", str(tmp_path / "nope.pt"))
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "nope.pt" in result.stderr
