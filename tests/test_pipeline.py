"""The Qt-free pipeline: segment, export, jacobian_report, flow_frames — numpy in and out."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_difftt import pipeline
from napari_difftt.core.io import Volume, display_affine

SPACING = (1.5, 1.0, 0.8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent / "napari"))
    from difftt_helpers import untrained_checkpoint

    return untrained_checkpoint(tmp_path_factory.mktemp("pipeline") / "tiny3d.pt", ndim=3)


@pytest.fixture(scope="module")
def phantom():
    from napari_difftt.core.data import make_phantom

    return make_phantom((16, 20, 18), seed=4, spacing=SPACING)


@pytest.fixture(scope="module")
def result(checkpoint, phantom):
    volume = Volume(phantom.image, display_affine(SPACING, (0.0, 0.0, 0.0)))
    return pipeline.segment(volume, checkpoint, truth=phantom.labels, device="cpu")


def test_segment_carries_its_provenance_metrics_and_topology(result, phantom, checkpoint):
    from napari_difftt.core.inference import load_model
    from napari_difftt.core.metrics import METRIC_KEYS, evaluate_case

    assert result.kind == "bch" and result.checkpoint == checkpoint and result.device == "cpu"
    assert result.prior == load_model(checkpoint).model.prior.to_dict()
    np.testing.assert_allclose(result.affine, display_affine(SPACING, (0.0, 0.0, 0.0)))
    prediction = result.prediction
    assert prediction.displacement.shape == (3, *phantom.image.shape)
    assert set(result.metrics) == set(METRIC_KEYS)
    assert result.metrics == evaluate_case(prediction.segmentation, phantom.labels, SPACING,
                                           prediction.displacement)
    assert result.topology == prediction.topology and "holds" in result.topology


def test_a_given_prior_is_used_and_the_model_keeps_its_own(checkpoint, phantom):
    from napari_difftt.core.prior import GeneralisedGaussianPrior

    loaded = pipeline.load(checkpoint, device="cpu")
    own = loaded.model.prior.to_dict()
    tuned = GeneralisedGaussianPrior(3, mean=(0.3, 0.0, 0.0), beta=2.0).to_dict()
    result = pipeline.segment(phantom.image, loaded, tuned)  # an array: 1 mm voxels
    assert result.prior == tuned and loaded.model.prior.to_dict() == own
    assert result.checkpoint is None and result.volume.array is phantom.image
    with pytest.raises(ValueError, match="is a 3D model but the image is 2D"):
        pipeline.segment(phantom.image[0], loaded)


def test_two_threads_predict_with_different_priors_on_one_loaded_model(checkpoint, phantom):
    """The prior is an argument of the forward pass: nothing shared is swapped, so concurrent
    predictions each get their own prior (the old code mutated ``loaded.model.prior``)."""
    import threading

    from napari_difftt.core.prior import GeneralisedGaussianPrior

    loaded = pipeline.load(checkpoint, device="cpu")
    priors = [GeneralisedGaussianPrior(3, mean=(m, 0.0, 0.0), beta=2.0).to_dict()
              for m in (-0.3, 0.3)]
    alone = [pipeline.segment(phantom.image, loaded, prior) for prior in priors]
    results: dict[int, pipeline.Result] = {}
    barrier = threading.Barrier(2)

    def run(index: int) -> None:
        barrier.wait()
        for _ in range(3):  # overlap the passes
            results[index] = pipeline.segment(phantom.image, loaded, priors[index],
                                              progress=lambda *_: None,
                                              should_stop=lambda: False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        assert results[index].prior == priors[index]
        np.testing.assert_array_equal(results[index].prediction.prior,
                                      alone[index].prediction.prior)
        np.testing.assert_allclose(results[index].prediction.probability,
                                   alone[index].prediction.probability, atol=1e-6)
    assert not np.allclose(alone[0].prediction.prior, alone[1].prediction.prior)


def test_the_cancellable_path_reports_the_same_topology_and_stops_before_it(checkpoint, phantom):
    """With ``should_stop`` the topology report runs after the interruptible forward pass: the
    same report as without, and a Stop pressed once the pass is over cancels it."""
    from napari_difftt.errors import Cancelled

    loaded = pipeline.load(checkpoint, device="cpu")
    plain = pipeline.segment(phantom.image, loaded)
    cancellable = pipeline.segment(phantom.image, loaded, should_stop=lambda: False)
    assert cancellable.prediction.topology == plain.prediction.topology
    assert cancellable.prediction.topology["folding_digital"] is not None
    finished: list[str] = []  # the forward pass reports "done" last; the report comes next

    def progress(done: int, total: int, message: str) -> None:
        if message == "done":
            finished.append(message)

    with pytest.raises(Cancelled, match="before the topology report"):
        pipeline.segment(phantom.image, loaded, progress=progress,
                         should_stop=lambda: bool(finished))


def test_export_writes_the_one_contract(result, phantom, tmp_path):
    written = pipeline.export(result, tmp_path, "case",
                              ["seg", "prob", "jacdet", "displacement", "mesh"])
    assert [p.name for p in written] == ["case_seg.nii.gz", "case_prob.nii.gz",
                                         "case_jacdet.nii.gz", "case_displacement.npy",
                                         "case_surface.stl"]
    seg = nib.load(tmp_path / "case_seg.nii.gz")
    np.testing.assert_allclose(nib.affines.voxel_sizes(seg.affine), SPACING[::-1])
    np.testing.assert_array_equal(np.asarray(seg.dataobj).T, result.prediction.segmentation)
    np.testing.assert_array_equal(np.load(tmp_path / "case_displacement.npy"),
                                  result.prediction.displacement)
    det = nib.load(tmp_path / "case_jacdet.nii.gz").get_fdata().T
    np.testing.assert_allclose(det, pipeline.jacobian_report(result).det, rtol=1e-6)
    with pytest.raises(FileExistsError, match=r"case_seg\.nii\.gz exists"):
        pipeline.export(result, tmp_path, "case", ["seg"])
    flat = pipeline.Result.of_arrays(Volume(np.zeros((4, 5)), np.eye(4)),
                                     np.zeros((4, 5), np.uint8))
    for what, message in ((["jacdet"], "need a prediction with a flow"),
                          (["mesh"], "needs a 3D segmentation"), (["prob"], "no probability"),
                          (["seg", "tiff"], "outputs must be some of")):
        with pytest.raises(ValueError, match=message):
            pipeline.export(flat, tmp_path, "flat", what)
    assert not list(tmp_path.glob("flat*"))


def test_export_checks_every_grid_before_writing_anything(result, tmp_path):
    """A displacement on another grid than the volume: the old export wrote ``_seg.nii.gz``
    and then failed; now nothing is written."""
    other = np.zeros((3, 8, 8, 8), np.float32)
    mixed = pipeline.Result.of_arrays(result.volume, result.prediction.segmentation,
                                      result.prediction.probability, other)
    with pytest.raises(ValueError, match=r"displacement has shape \(3, 8, 8, 8\)"):
        pipeline.export(mixed, tmp_path, "mixed", ["seg", "prob", "jacdet", "displacement"])
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_removes_the_cases_new_files_and_keeps_old_ones(
        result, tmp_path, monkeypatch):
    from napari_difftt.core import mesh

    kept = tmp_path / "case_prob.nii.gz"
    kept.write_bytes(b"an earlier export")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mesh, "write_mesh", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pipeline.export(result, tmp_path, "case", ["seg", "prob", "displacement", "mesh"],
                        overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_prob.nii.gz"]


def test_predict_files_is_one_batch_path(checkpoint, phantom, tmp_path):
    from napari_difftt.core.io import write_nifti

    inputs = tmp_path / "in"
    for name in ("a", "b"):
        write_nifti(inputs / f"{name}.nii.gz", phantom.image,
                    affine=display_affine(SPACING, (0.0, 0.0, 0.0)))
    out, reports, cases = tmp_path / "out", [], []
    batch = pipeline.predict_files([inputs], out, checkpoint, ("seg", "prob"),
                                   lambda d, t, m: reports.append((d, t)), None, device="cpu",
                                   on_case=lambda path, res, files: cases.append(path.name))
    assert batch.files == 2 and batch.folder == out and cases == ["a.nii.gz", "b.nii.gz"]
    assert [p.name for p in batch.written] == ["a_seg.nii.gz", "a_prob.nii.gz",
                                               "b_seg.nii.gz", "b_prob.nii.gz"]
    done = [d for d, _ in reports]
    assert done == sorted(done) and reports[-1][0] == reports[-1][1]
    with pytest.raises(FileExistsError, match=r"a_seg\.nii\.gz exists \(4 output"):
        pipeline.predict_files([inputs], out, checkpoint, ("seg", "prob"))
    assert pipeline.predict_files([inputs / "a.nii.gz"], out, checkpoint, ("seg",),
                                  overwrite=True).files == 1


def test_jacobian_report_of_a_known_field():
    shape = (6, 7, 8)
    volume = Volume(np.zeros(shape), np.eye(4))
    displacement = np.zeros((3, *shape), np.float32)
    displacement[2] = np.arange(shape[2], dtype=np.float32) * -0.5  # det = 0.5 everywhere
    report = pipeline.jacobian_report(pipeline.Result.of_arrays(volume, None, None, displacement))
    np.testing.assert_allclose(report.det, 0.5, atol=1e-6)
    assert report.folded_central == report.folded_digital == 0.0 and report.folds == ()
    np.testing.assert_allclose(report.log_det, -1.0, atol=1e-6)
    assert report.limits == pytest.approx((-1.0, 1.0))
    mirror = np.zeros((2, 8, 9), np.float32)
    mirror[1] = -2.0 * np.arange(9, dtype=np.float32)  # x ↦ −x: det = −1 everywhere
    flat = Volume(np.zeros((8, 9)), np.eye(4))
    folded = pipeline.jacobian_report(pipeline.Result.of_arrays(flat, None, None, mirror))
    assert folded.folded_central == 100.0 and len(folded.folds) == 1
    assert (folded.log_det == folded.limits[0]).all()  # folds shown as the most compressed
    with pytest.raises(ValueError, match="predicts no displacement"):
        pipeline.jacobian_report(pipeline.Result.of_arrays(flat, None))


def test_flow_frames_follow_the_results_prior_or_resample_without_one(result):
    frames = pipeline.flow_frames(result, 3, "stationary")
    np.testing.assert_allclose(frames[0], result.prediction.prior, atol=1e-6)
    np.testing.assert_allclose(frames[2], result.prediction.probability, atol=1e-5)
    unknown = pipeline.Result(result.prediction, result.volume, None, result.kind)
    np.testing.assert_allclose(pipeline.flow_frames(unknown, 3, "stationary")[0],
                               result.prediction.prior, atol=1e-6)
    assert pipeline.endpoint_gap(frames, result.prediction.displacement) < 1e-4
    with pytest.raises(ValueError, match="path must be one of"):
        pipeline.flow_frames(result, 3, "sideways")


def test_the_velocities_stay_coarse_until_the_flow_is_replayed(result):
    flow = result.prediction.flow
    shape = result.prediction.probability.shape
    assert flow.velocities.shape[2:] == flow.space.coarse_shape(flow.padded)
    velocity, velocities = flow.on_image_grid()
    assert velocities.shape == (flow.pieces, 3, *shape) and velocity.shape == (3, *shape)


def test_text():
    text = pipeline.format_metrics({"dice": 0.5, "hausdorff": float("inf"), "components": 2,
                                    "unknown": 1})
    assert text.splitlines() == ["Dice: 0.500", "HD (mm): ∞", "components: 2"]


def test_a_posed_prediction_records_the_posed_prior(phantom):
    """With a pose level the flow deforms S∘A: the record's prior is that one, so the Flow
    explorer starts at the prediction's own unwarped prior and ends at its probability."""
    import torch

    from napari_difftt.core.inference import LoadedModel
    from napari_difftt.core.models import TemplateTransformer
    from napari_difftt.core.pose import posed_prior

    torch.manual_seed(3)
    model = TemplateTransformer("svf", ndim=3, width=2, pose=True).eval()
    with torch.no_grad():
        model.pose_head.head.bias.fill_(0.3)  # a mask larger than the prior: a real pose
    loaded = LoadedModel(model, {}, torch.device("cpu"))
    result = pipeline.segment(phantom.image, loaded)
    pose = result.prediction.pose
    assert pose is not None and not np.allclose(pose, np.eye(4), atol=1e-3)
    assert result.prior == posed_prior(model.prior, torch.as_tensor(pose)).to_dict()
    assert result.prior != model.prior.to_dict()
    frames = pipeline.flow_frames(result, 3, "stationary")
    np.testing.assert_allclose(frames[0], result.prediction.prior, atol=1e-4)
    np.testing.assert_allclose(frames[2], result.prediction.probability, atol=1e-4)
