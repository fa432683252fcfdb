"""One typed error (or a documented, correct result) from every public entry point."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from napari_difftt import pipeline
from napari_difftt.core.flow import bch, integrate
from napari_difftt.core.inference import LoadedModel, predict_volume
from napari_difftt.core.io import read_nifti, write_nifti
from napari_difftt.core.models import TemplateTransformer
from napari_difftt.errors import VolumeError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = TemplateTransformer("bch", ndim=2, pieces=2, width=2)
    with torch.no_grad():
        model.net.head.weight.normal_(std=0.1)
    return model.eval()


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, {"spacing": [1.0, 1.0]}, torch.device("cpu"))


@pytest.mark.parametrize(("image", "message"), [
    (np.random.default_rng(0).random((4, 16, 16, 16)), r"the image has shape \(4, 16, 16, 16\)"),
    (np.full((16, 16), 7.0), "the image has no contrast: every voxel is 7"),
    (np.full((16, 16), np.nan), "the image has no finite voxel"),
    (np.zeros((16, 1)), r"the image has shape \(16, 1\)"),
])
def test_segment_refuses_images_with_nothing_to_segment(model, image, message):
    """A constant image came back as a 718-voxel organ; a 4D array gave a numpy broadcast
    error from deep inside."""
    with pytest.raises(VolumeError, match=message):
        pipeline.segment(image, _loaded(model))


def test_segment_names_the_file_of_a_constant_volume(model, tmp_path):
    path = write_nifti(tmp_path / "blank.nii.gz", np.full((16, 16), 3.0))
    with pytest.raises(VolumeError, match=r"blank\.nii\.gz has no contrast"):
        pipeline.segment(read_nifti(path), _loaded(model))


def test_predict_volume_accepts_a_tensor_that_requires_grad(model):
    """It raised torch's "Can't call numpy() on Tensor that requires grad"; it is detached."""
    image = torch.rand(16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    from_tensor = predict_volume(model, image, topology=False)
    from_array = predict_volume(model, image.detach().numpy(), topology=False)
    np.testing.assert_array_equal(from_tensor.probability, from_array.probability)


def test_a_float64_image_is_cast_to_the_models_dtype(model):
    """torch's "Input type (double) and bias type (float) should be the same"."""
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        single, double = model(image), model(image.double())
    assert double.probability.dtype == torch.float32
    torch.testing.assert_close(double.probability, single.probability)


def test_overflowing_bch_is_refused_naming_the_velocities():
    """1e20-voxel velocities: the brackets overflowed float32 and exp raised "cannot convert
    float NaN to integer"."""
    velocities = torch.randn(1, 2, 2, 8, 8, generator=torch.Generator().manual_seed(3)) * 1e20
    with pytest.raises(ValueError, match="their BCH combination of order 2 overflows"):
        integrate(velocities, "bch", 2)
    with pytest.raises(ValueError, match=r"overflows torch\.float32"):
        bch(velocities[:, 0], velocities[:, 1], 3)
    small = integrate(velocities * 1e-21, "bch", 2)  # ordinary fields are untouched
    assert torch.isfinite(small.displacement).all()


@pytest.mark.parametrize("code", [999, 1])
def test_header_corrupt_and_one_bit_nifti_name_the_file(tmp_path, capfd, code):
    """nibabel's HeaderDataError traceback (datatype 999; 1 is DT_BINARY, one bit per voxel)."""
    path = write_nifti(tmp_path / "bad.nii", np.random.default_rng(0).random((4, 4, 4)))
    blob = bytearray(path.read_bytes())
    blob[70:72] = struct.pack("<h", code)  # the datatype field of the NIfTI-1 header
    path.write_bytes(bytes(blob))
    capfd.readouterr()
    with pytest.raises(VolumeError, match=r"cannot read .*bad\.nii: it is truncated, corrupt"):
        read_nifti(path)
    assert capfd.readouterr().err == ""  # nibabel's own log line is not shown either


def test_a_one_voxel_volume_stays_3d_and_is_refused_by_name(model, tmp_path):
    """(1, 1, 1) was squeezed to 2D and refused as "the image is 2D"."""
    path = write_nifti(tmp_path / "dot.nii.gz", np.ones((1, 1, 1)))
    volume = read_nifti(path)
    assert volume.array.shape == (1, 1, 1)
    with pytest.raises(VolumeError, match=r"dot\.nii\.gz has shape \(1, 1, 1\)"):
        pipeline.segment(volume, _loaded(model))
    one_slice = read_nifti(write_nifti(tmp_path / "slice.nii.gz", np.ones((1, 5, 6))))
    assert one_slice.array.shape == (5, 6)  # stored (X, Y, 1): still one 2D slice
