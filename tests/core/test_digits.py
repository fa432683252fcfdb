"""IDX reader/writer, file discovery, the rotation protocol and the digit loaders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_difftt.core.classification.digits import (
    IDXError,
    find_idx_files,
    load_digits,
    read_idx,
    rotate_images,
    rotated_digits,
    write_idx,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray,
                gz: bool = True) -> None:
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


# --------------------------------------------------------------------------------------------
# IDX format


def test_read_idx_decodes_the_documented_byte_layout(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 0, 255]))
    np.testing.assert_array_equal(read_idx(path), np.array([7, 0, 255], dtype=np.uint8))
    path.write_bytes(bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(path), np.array([[258, -2]], dtype=np.int16))


@pytest.mark.parametrize("name", ["raw-idx3-ubyte", "zipped-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7 - 20).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_write_idx_refuses_unstorable_dtypes(tmp_path):
    with pytest.raises(TypeError, match="IDX cannot store dtype int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "too short for an IDX header"),
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "not an IDX file: magic number 0x01000801"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "unknown IDX dtype code 0x07"),
        (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated inside its header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3]), r"truncated: its header says \(4,\) uint8"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "1 bytes after the 2 bytes"),
    ],
)
def test_read_idx_rejects_bad_files_naming_them(tmp_path, payload, message):
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(IDXError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_read_idx_rejects_truncated_gzip_and_wrong_rank(tmp_path):
    path = write_idx(tmp_path / "images-idx3-ubyte.gz", np.zeros((4, 5, 6), dtype=np.uint8))
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(IDXError, match=f"{cut} is a truncated or corrupt gzip file"):
        read_idx(cut)
    with pytest.raises(IDXError, match=r"holds 3-dimensional data, expected 1 \(idx1\)"):
        read_idx(path, ndim=1)


# --------------------------------------------------------------------------------------------
# finding and loading splits


def test_find_idx_files_accepts_the_usual_names(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    labels = np.array([1, 2], dtype=np.uint8)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", labels)
    write_split(tmp_path, "test", images, labels, gz=True)
    assert [p.name for p in find_idx_files(tmp_path, "train")] == [
        "train-images.idx3-ubyte", "train-labels.idx1-ubyte"]
    assert [p.name for p in find_idx_files(tmp_path, "test")] == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_find_idx_files_errors_name_the_folder_and_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        find_idx_files(tmp_path / "nope", "train")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 28, 28), dtype=np.uint8))
    expected = f"no test labels file in {tmp_path}: expected one of t10k-labels-idx1"
    with pytest.raises(FileNotFoundError, match=expected):
        find_idx_files(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        find_idx_files(tmp_path, "val")


def test_load_digits_checks_counts_and_dtypes(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    write_split(tmp_path, "train", images, np.array([3, 1, 4], dtype=np.uint8))
    digits = load_digits(tmp_path, "train")
    np.testing.assert_array_equal(digits.images, images)
    assert digits.labels.dtype == np.int64 and digits.labels.tolist() == [3, 1, 4]

    write_split(tmp_path, "test", images, np.array([3, 1], dtype=np.uint8))
    with pytest.raises(IDXError, match=r"holds 3 images but .*t10k-labels-idx1-ubyte\.gz holds 2"):
        load_digits(tmp_path, "test")
    write_split(tmp_path, "test", images.astype(np.float32), np.array([3, 1, 4], dtype=np.uint8))
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte\.gz stores float32, expected"):
        load_digits(tmp_path, "test")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_test_split_loads():
    digits = load_digits(FASHION, "test")
    assert digits.images.shape == (10000, 28, 28) and digits.images.dtype == np.uint8
    assert sorted(set(digits.labels.tolist())) == list(range(10))


# --------------------------------------------------------------------------------------------
# rotation protocol


def test_rotate_images_matches_exact_quarter_turns():
    images = torch.rand(4, 7, 9, dtype=torch.float64)
    square = torch.rand(2, 8, 8, dtype=torch.float64)
    turned = rotate_images(square, [90.0, -90.0]).numpy()
    np.testing.assert_allclose(turned[0], np.rot90(square[0].numpy(), 1), atol=1e-12)
    np.testing.assert_allclose(turned[1], np.rot90(square[1].numpy(), -1), atol=1e-12)
    half = rotate_images(images, [180.0, -180.0, 0.0, 360.0]).numpy()
    np.testing.assert_allclose(half[0], np.rot90(images[0].numpy(), 2), atol=1e-12)
    np.testing.assert_allclose(half[1], np.rot90(images[1].numpy(), 2), atol=1e-12)
    np.testing.assert_allclose(half[2], images[2].numpy(), atol=1e-12)
    np.testing.assert_allclose(half[3], images[3].numpy(), atol=1e-12)


def test_rotate_images_checks_arguments():
    with pytest.raises(ValueError, match=r"angles must have shape \(2,\)"):
        rotate_images(torch.zeros(2, 5, 5), [1.0])
    with pytest.raises(ValueError, match=r"floating tensor of shape \(N, H, W\)"):
        rotate_images(torch.zeros(2, 1, 5, 5), [1.0, 2.0])


def _disk_digits(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred disks whose brightness encodes the label (rotation-invariant content)."""
    labels = (np.arange(count) % 10).astype(np.uint8)
    y, x = np.mgrid[:28, :28]
    disk = (y - 13.5) ** 2 + (x - 13.5) ** 2 <= 36
    images = (disk[None] * (labels[:, None, None].astype(np.int64) * 25 + 5)).astype(np.uint8)
    return images, labels


def test_rotated_digits_is_seeded_uniform_and_keeps_labels(tmp_path):
    images, labels = _disk_digits(2000)
    write_split(tmp_path, "train", images, labels)
    data = rotated_digits(tmp_path, "train", seed=3)
    assert data.images.shape == (2000, 1, 28, 28) and data.images.dtype == torch.float32
    assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
    angles = data.angles.numpy()
    assert angles.min() >= -90 and angles.max() <= 90
    assert angles.min() < -85 and angles.max() > 85 and abs(angles.mean()) < 5
    # a centred disk survives any rotation: its centre brightness still encodes the label
    centre = data.images[:, 0, 12:16, 12:16].mean(dim=(1, 2)) * 255
    np.testing.assert_allclose(centre.numpy(), data.labels.numpy() * 25 + 5, atol=1e-3)

    again = rotated_digits(tmp_path, "train", seed=3)
    assert torch.equal(again.images, data.images) and torch.equal(again.angles, data.angles)
    other = rotated_digits(tmp_path, "train", seed=4)
    assert not torch.equal(other.angles, data.angles)


def test_rotated_digits_subset_and_argument_errors(tmp_path):
    images, labels = _disk_digits(50)
    write_split(tmp_path, "test", images, labels)
    part = rotated_digits(tmp_path, "test", seed=0, subset=20, max_angle=0.0)
    assert len(part.labels) == 20 and torch.all(part.angles == 0)
    assert len(set(part.images[:, 0, 13, 13].tolist())) > 1  # a random mix, not one class
    assert len(rotated_digits(tmp_path, "test", subset=500).labels) == 50
    with pytest.raises(ValueError, match="subset must be a positive number of images"):
        rotated_digits(tmp_path, "test", subset=0)
    with pytest.raises(ValueError, match=r"max_angle must be in \[0, 180\]"):
        rotated_digits(tmp_path, "test", max_angle=-1.0)


def test_gzip_detection_uses_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    plain = write_idx(tmp_path / "a-idx1-ubyte", array)
    zipped = tmp_path / "b-idx1-ubyte"  # gzipped content without a .gz name
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_idx(zipped), array)
