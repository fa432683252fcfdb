"""The Qt-free pipeline: segment, export, jacobian_report, flow_frames — numpy in and out."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_difftt import pipeline
from napari_difftt.core.io import Volume
from napari_difftt.layer_metadata import display_affine

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
    assert result.checkpoint is None
    with pytest.raises(ValueError, match="is a 3D model but the image is 2D"):
        pipeline.segment(phantom.image[0], loaded)


def test_export_writes_the_one_contract(result, phantom, tmp_path):
    volume = Volume(phantom.image, result.affine)
    written = pipeline.export(result, volume, tmp_path, "case",
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
    np.testing.assert_allclose(det, pipeline.jacobian_report(result.prediction.displacement).det,
                               rtol=1e-6)
    with pytest.raises(FileExistsError, match=r"case_seg\.nii\.gz exists"):
        pipeline.export(result, volume, tmp_path, "case", ["seg"])
    flat = pipeline.Result.of_arrays(np.zeros((4, 5), np.uint8), np.eye(4))
    for what, message in ((["jacdet"], "need a prediction with a flow"),
                          (["mesh"], "needs a 3D segmentation"), (["prob"], "no probability"),
                          (["seg", "tiff"], "outputs must be some of")):
        with pytest.raises(ValueError, match=message):
            pipeline.export(flat, Volume(np.zeros((4, 5)), np.eye(4)), tmp_path, "flat", what)


def test_jacobian_report_of_a_known_field():
    shape = (6, 7, 8)
    displacement = np.zeros((3, *shape), np.float32)
    displacement[2] = np.arange(shape[2], dtype=np.float32) * -0.5  # det = 0.5 everywhere
    report = pipeline.jacobian_report(displacement)
    np.testing.assert_allclose(report.det, 0.5, atol=1e-6)
    assert report.folded_central == report.folded_digital == 0.0 and report.folds == ()
    np.testing.assert_allclose(report.log_det, -1.0, atol=1e-6)
    assert report.limits == pytest.approx((-1.0, 1.0))
    mirror = np.zeros((2, 8, 9), np.float32)
    mirror[1] = -2.0 * np.arange(9, dtype=np.float32)  # x ↦ −x: det = −1 everywhere
    folded = pipeline.jacobian_report(mirror)
    assert folded.folded_central == 100.0 and len(folded.folds) == 1
    assert (folded.log_det == folded.limits[0]).all()  # folds shown as the most compressed


def test_flow_frames_follow_the_results_prior_or_resample_without_one(result):
    frames = pipeline.flow_frames(result, 3, "stationary")
    np.testing.assert_allclose(frames[0], result.prediction.prior, atol=1e-6)
    np.testing.assert_allclose(frames[2], result.prediction.probability, atol=1e-5)
    unknown = pipeline.Result(result.prediction, result.affine, None, result.kind)
    np.testing.assert_allclose(pipeline.flow_frames(unknown, 3, "stationary")[0],
                               result.prediction.prior, atol=1e-6)
    assert pipeline.endpoint_gap(frames, result.prediction.displacement) < 1e-4
    with pytest.raises(ValueError, match="path must be one of"):
        pipeline.flow_frames(result, 3, "sideways")


def test_text_and_lazy_names():
    text = pipeline.format_metrics({"dice": 0.5, "hausdorff": float("inf"), "components": 2,
                                    "unknown": 1})
    assert text.splitlines() == ["Dice: 0.500", "HD (mm): ∞", "components: 2"]
    for name in pipeline._CORE:
        assert getattr(pipeline, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pipeline.nothing  # noqa: B018
