"""Segment from my slices (napari_difftt.fine_tune): checks before anything runs, one run."""

from __future__ import annotations

import numpy as np
import pytest

from napari_difftt.core.data import make_phantom
from napari_difftt.core.inference import default_checkpoint
from napari_difftt.core.io import Volume
from napari_difftt.core.slices import evenly_spaced_slices, paint
from napari_difftt.errors import AnnotationError, IncompatibleCheckpoint, VolumeError
from napari_difftt.fine_tune import FINE_TUNE, Finished, Step, count_slices, fine_tune


@pytest.fixture(scope="module")
def flat():
    phantom = make_phantom((32, 32), seed=5)
    painted = paint(phantom.labels, evenly_spaced_slices(phantom.labels, 3))
    return Volume(phantom.image, np.eye(4)), painted, phantom.labels


def test_count_says_what_counts(flat):
    _, painted, _ = flat
    counted = count_slices(painted, 0)
    assert counted.slices == evenly_spaced_slices(flat[2], 3) and counted.voxels == 3 * 32
    assert counted.text.startswith("3 slices along rows, 96 voxels count")


@pytest.mark.parametrize("bad, error, message", [
    ({"painted": "empty"}, AnnotationError, "nothing is painted"),
    ({"painted": "value"}, AnnotationError, r"value\(s\) 3"),
    ({"painted": "two axes"}, AnnotationError, "two axes"),
    ({"minutes": 0.0}, ValueError, "minutes must be a positive number"),
    ({"minutes": -2.0}, ValueError, "minutes must be a positive number"),
    ({"checkpoint": "3d"}, IncompatibleCheckpoint, "holds a 3D 'bch' model but this run trains a "
                                                   "2D 'bch' model"),
    ({"image": "constant"}, VolumeError, "image 'painted' has no contrast: every voxel is 0.5"),
])
def test_bad_input_is_refused_before_anything_runs(flat, tmp_path, bad, error, message):
    volume, painted, labels = flat
    painted = {"empty": np.zeros_like(painted), "value": np.where(painted, 3, 0),
               "two axes": painted | paint(labels, [16], axis=1)}.get(bad.pop("painted", ""),
                                                                     painted)
    if bad.get("checkpoint") == "3d":
        bad["checkpoint"] = default_checkpoint(3)
    if bad.pop("image", None) == "constant":  # the user's value, not the normalised one
        volume = Volume(np.full_like(volume.array, 0.5), volume.affine)
    out = tmp_path / "tuned.pt"
    with pytest.raises(error, match=message):
        fine_tune(volume, painted, 0, out, device="cpu", **bad)
    assert not out.exists()


def test_an_existing_checkpoint_is_never_replaced(flat, tmp_path):
    out = tmp_path / "tuned.pt"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="exists"):
        fine_tune(flat[0], flat[1], 0, out, device="cpu")
    assert out.read_bytes() == b"mine"


def test_fine_tune_trains_for_the_budget_then_segments_with_topology(flat, tmp_path):
    volume, painted, labels = flat
    run = fine_tune(volume, painted, 0, tmp_path / "tuned.pt", minutes=0.02, device="cpu")
    events = list(run.events())
    steps, finished = events[:-1], events[-1]
    assert steps and all(isinstance(e, Step) for e in steps) and steps[-1].fraction == 1.0
    assert isinstance(finished, Finished) and not finished.stopped
    assert finished.checkpoint.is_file() and finished.steps == steps[-1].step
    result = finished.result
    assert result.prediction.segmentation.shape == labels.shape
    assert result.topology["components"] >= 1 and "folding_digital" in result.topology


def test_a_stop_keeps_the_checkpoint_and_segments_nothing(flat, tmp_path):
    run = fine_tune(flat[0], flat[1], 0, tmp_path / "tuned.pt", minutes=5.0, device="cpu")
    finished = list(run.events(should_stop=lambda: True))[-1]
    assert finished.stopped and finished.result is None and finished.checkpoint.is_file()


def test_the_prior_is_refitted_to_the_slices_unless_kept(flat, tmp_path):
    from napari_difftt.core.io import load_checkpoint

    bundled = load_checkpoint(default_checkpoint(2), map_location="cpu")["prior"]["mean"]
    refit = fine_tune(flat[0], flat[1], 0, tmp_path / "refit.pt", device="cpu")
    kept = fine_tune(flat[0], flat[1], 0, tmp_path / "kept.pt", device="cpu", keep_prior=True)
    assert not refit.trainer.config.keep_prior and kept.trainer.config.keep_prior
    for run in (refit, kept):  # stopped at once: the model is built, nothing trained
        assert list(run.events(should_stop=lambda: True))[-1].stopped
    kept_mean = kept.trainer.model.prior.mean.detach()
    np.testing.assert_allclose(kept_mean, bundled, atol=1e-4)  # the weights are float16
    assert not np.allclose(refit.trainer.model.prior.mean.detach(), bundled, atol=1e-3)


def test_the_dock_tunes_what_fine_tune_says_of_a_flow_model_and_all_of_a_unet(
        flat, tmp_path, monkeypatch):
    """fine_tune (the "Segment from my slices" dock) trains all of the bundled flow model by
    default; with FINE_TUNE["tune"] = "heads" (docs/RESULTS.md) its U-Net stays frozen, while a
    U-Net checkpoint is always tuned whole."""
    from napari_difftt.core.data import Sample
    from napari_difftt.core.train import TrainConfig, Trainer

    assert FINE_TUNE["tune"] == "all"
    assert fine_tune(flat[0], flat[1], 0, tmp_path / "all_bch.pt",
                     device="cpu").trainer.config.tune == "all"
    monkeypatch.setitem(FINE_TUNE, "tune", "heads")
    run = fine_tune(flat[0], flat[1], 0, tmp_path / "heads.pt", device="cpu")
    assert run.trainer.config.tune == "heads"
    assert list(run.events(should_stop=lambda: True))[-1].stopped
    assert not any(p.requires_grad for n, p in run.trainer.model.named_parameters()
                   if n.startswith("net.down."))
    unet = tmp_path / "unet.pt"
    Trainer(TrainConfig(kind="unet", iterations=1, patch_size=(32, 32), width=2, device="cpu",
                        checkpoint=str(unet)),
            [Sample(flat[0].array, flat[2], (1.0, 1.0), "flat")]).run()
    assert fine_tune(flat[0], flat[1], 0, tmp_path / "all.pt", checkpoint=unet,
                     device="cpu").trainer.config.tune == "all"
