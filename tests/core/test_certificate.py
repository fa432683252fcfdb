"""The certified fold tests of an upsampled displacement (core.flow.certificate): the same counts
as the exhaustive tests, a bound that covers every difference a block reads, and the report
of a real prediction unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_difftt.core.flow import certificate, folding_fraction
from napari_difftt.core.flow.certificate import (
    BLOCK,
    CERTIFIED,
    Upsampling,
    block_bounds,
    upsampled_folding,
)
from napari_difftt.core.flow.grid import identity
from napari_difftt.core.flow.jacobian import (
    _corner_dets,
    digital_folds_of_map,
    tetrahedra_folds_of_map,
)
from napari_difftt.core.flow.velocity import VelocitySpace
from napari_difftt.core.inference import predict_volume
from napari_difftt.core.metrics import topology_report
from napari_difftt.core.models import TemplateTransformer


def _upsampled(coarse_shape, factor, amplitude, crop, seed=0):
    """A smooth random coarse displacement (coarse voxels), its to_fine on the padded grid
    cropped at ``crop`` (start, size per axis), and the Upsampling that describes it."""
    generator = torch.Generator().manual_seed(seed)
    n = len(coarse_shape)
    noise = torch.randn(1, n, *coarse_shape, generator=generator, dtype=torch.float32)
    pool = F.avg_pool2d if n == 2 else F.avg_pool3d
    coarse = amplitude * pool(noise, 3, stride=1, padding=1, count_include_pad=False)
    padded = tuple(factor * c for c in coarse_shape)
    fine = VelocitySpace(factor=factor).to_fine(coarse, padded)[0]
    window = tuple(slice(start, start + size) for start, size in crop)
    return (fine[(slice(None), *window)].contiguous(),
            Upsampling(coarse[0], factor, tuple(start for start, _ in crop)))


CASES = [  # coarse shape, factor, crop (start, size) per axis
    ((20, 18, 22), 2, ((0, 40), (0, 36), (0, 44))),
    ((20, 18, 22), 2, ((3, 31), (1, 34), (5, 27))),
    ((12, 10, 11), 4, ((2, 41), (0, 40), (7, 30))),
    ((24, 21, 19), 1, ((1, 21), (0, 21), (2, 15))),
    ((30, 26), 2, ((1, 57), (4, 40))),
    ((16, 18), 4, ((3, 50), (0, 72))),
]


@pytest.mark.parametrize("coarse_shape, factor, crop", CASES)
@pytest.mark.parametrize("amplitude", [0.3, 3.0, 12.0])
@pytest.mark.parametrize("whole_above", [certificate.WHOLE_ABOVE, 1.0])  # 1: blocks always
def test_certified_counts_are_the_exhaustive_tests_counts(coarse_shape, factor, crop,
                                                          amplitude, whole_above, monkeypatch):
    monkeypatch.setattr(certificate, "WHOLE_ABOVE", whole_above)
    fine, upsampling = _upsampled(coarse_shape, factor, amplitude, crop)
    central, digital = upsampled_folding(fine, upsampling)
    shape = fine.shape[1:]
    for scheme, fraction, voxels in (("central", central, math.prod(shape)),
                                     ("digital", digital, math.prod(s - 2 for s in shape))):
        exhaustive = folding_fraction(fine[None], scheme)[0]
        assert round(fraction * voxels) == round(float(exhaustive) * voxels), scheme
    if amplitude == 12.0:  # the case that must fold: the equality above is not 0 = 0
        assert digital > 0.01


@pytest.mark.parametrize("coarse_shape, factor, crop", CASES)
def test_the_bound_covers_every_difference_a_block_reads(coarse_shape, factor, crop):
    fine, upsampling = _upsampled(coarse_shape, factor, 2.0, crop, seed=1)
    bound = block_bounds(upsampling, fine.shape[1:])
    n, shape = fine.ndim - 1, fine.shape[1:]
    squares = []
    for axis in range(n):  # forward difference from voxel i to i + 1 along axis, stored at i
        difference = fine.narrow(1 + axis, 1, shape[axis] - 1) - fine.narrow(
            1 + axis, 0, shape[axis] - 1)
        squares.append(difference.square().sum(0))
    for index in np.ndindex(*bound.shape):
        read = 0.0
        for square in squares:
            # every difference between voxels from the block's first − 1 to its last + 1
            window = tuple(slice(max(BLOCK * b - 1, 0), min(BLOCK * b + BLOCK + 1, s))
                           for b, s in zip(index, square.shape, strict=True))
            read += float(square[window].max())
        assert read <= float(bound[index]) * (1 + 1e-5) + 1e-6, index


def test_a_smooth_flow_is_certified_everywhere_and_a_rough_one_is_tested(monkeypatch):
    """Blocks are tested only where uncertified, and a volume of mostly uncertified blocks in
    one whole pass instead."""
    fine, upsampling = _upsampled((16, 16, 16), 2, 0.05, ((0, 32),) * 3)
    assert float(4 * block_bounds(upsampling, fine.shape[1:]).max()) < CERTIFIED
    tested = []
    original = certificate.digital_folds_of_map
    monkeypatch.setattr(certificate, "digital_folds_of_map",
                        lambda fields: tested.append(fields.shape[0]) or original(fields))
    assert upsampled_folding(fine, upsampling) == (0.0, 0.0)
    assert tested == []  # no block needed the exhaustive test
    rough, rough_upsampling = _upsampled((16, 16, 16), 2, 8.0, ((0, 32),) * 3)
    whole = upsampled_folding(rough, rough_upsampling)
    assert tested == []  # every block uncertified: one pass over the volume
    monkeypatch.setattr(certificate, "WHOLE_ABOVE", 1.0)
    assert upsampled_folding(rough, rough_upsampling) == pytest.approx(whole, rel=1e-6)
    assert sum(tested) == (32 // BLOCK) ** 3  # every block tested


def test_blocks_whose_corner_simplices_are_certified_test_only_the_tetrahedra(monkeypatch):
    """A block certified for the corner simplices (bound ≤ CERTIFIED) but not for the central
    tetrahedra (4 × bound > CERTIFIED) runs the tetrahedra alone; the counts stay exhaustive."""
    monkeypatch.setattr(certificate, "WHOLE_ABOVE", 1.0)  # blocks, never one whole pass
    fine, upsampling = _upsampled((16, 16, 16), 2, 0.8, ((0, 32),) * 3)
    bound = block_bounds(upsampling, fine.shape[1:])
    middle = int(((bound <= CERTIFIED) & (4 * bound > CERTIFIED)).sum())
    full = int((bound > CERTIFIED).sum())
    assert middle > 0 and full > 0
    calls = {"digital": 0, "tetrahedra": 0}

    def counting(name, test):
        return lambda fields: calls.__setitem__(name, calls[name] + len(fields)) or test(fields)

    monkeypatch.setattr(certificate, "digital_folds_of_map",
                        counting("digital", certificate.digital_folds_of_map))
    monkeypatch.setattr(certificate, "tetrahedra_folds_of_map",
                        counting("tetrahedra", certificate.tetrahedra_folds_of_map))
    _, digital = upsampled_folding(fine, upsampling)
    assert calls == {"digital": full, "tetrahedra": middle}
    exhaustive = float(folding_fraction(fine[None], "digital")[0])
    assert round(digital * 30**3) == round(exhaustive * 30**3)


def test_the_digital_test_is_its_corner_simplices_or_its_tetrahedra():
    """digital_folds_of_map = (a corner simplex folds) ∪ tetrahedra_folds_of_map, on a rough map
    where the tetrahedra fold."""
    generator = torch.Generator().manual_seed(3)
    displacement = 0.9 * torch.randn(2, 3, 9, 10, 11, generator=generator, dtype=torch.float64)
    phi = displacement + identity((9, 10, 11), dtype=torch.float64)
    corners = torch.stack(_corner_dets(phi)).amin(0) <= 0
    tetrahedra = tetrahedra_folds_of_map(phi)
    assert bool(tetrahedra.any())
    assert torch.equal(digital_folds_of_map(phi), corners | tetrahedra)


def test_an_upsampling_that_cannot_have_made_the_field_is_refused():
    fine, upsampling = _upsampled((10, 10, 10), 2, 0.5, ((0, 20),) * 3)
    with pytest.raises(ValueError, match="does not fit the padded grid"):
        upsampled_folding(fine, Upsampling(upsampling.coarse, 2, (1, 0, 0)))
    with pytest.raises(ValueError, match="does not describe a field"):
        upsampled_folding(fine, Upsampling(upsampling.coarse[:2], 2, (0, 0, 0)))


@pytest.mark.parametrize("gain", [0.0, 40.0])
def test_a_predictions_report_is_the_exhaustive_report(gain):
    """predict_volume certifies its fold tests from the coarse displacement; with a random head
    large enough to fold, the report still equals the exhaustive one."""
    torch.manual_seed(0)
    model = TemplateTransformer("bch", ndim=3, width=4, pose=True).eval()
    with torch.no_grad():
        model.net.head.weight.normal_(0, gain)
    image = np.random.default_rng(0).normal(size=(37, 40, 29)).astype(np.float32)
    prediction = predict_volume(model, image)
    assert prediction.flow.displacement is not None
    exhaustive = topology_report(prediction.segmentation, prediction.displacement)
    for key in ("folding_central", "folding_digital"):
        assert prediction.topology[key] == pytest.approx(exhaustive[key], rel=1e-6, abs=1e-9)
    assert prediction.topology["holds"] == exhaustive["holds"]
    if gain:
        assert prediction.topology["folding_digital"] > 0
