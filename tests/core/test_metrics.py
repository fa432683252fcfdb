"""Metrics against hand-computed cases and a brute-force reference; empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from napari_difftt.core.flow import folding_fraction
from napari_difftt.core.metrics import (
    METRIC_KEYS,
    components,
    dice,
    evaluate_case,
    folding_percent,
    hausdorff,
    hd95,
    summarise,
    topology_report,
)

SPACING = (2.0, 0.5, 0.7)  # mm per array axis (z, y, x)


def _cube(shape=(16, 16, 16), start=(4, 4, 4), size=6) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_dice_hand_computed():
    pred = np.zeros(10, np.uint8)
    target = np.zeros(10, np.uint8)
    pred[0:4] = 1
    target[1:7] = 1
    assert dice(pred, target) == pytest.approx(2 * 3 / (4 + 6))
    assert dice(target, target) == 1.0
    assert dice(torch.from_numpy(pred), torch.from_numpy(target).bool()) == pytest.approx(0.6)


def test_empty_masks_have_defined_values():
    empty, full = np.zeros((4, 4), bool), _cube((4, 4), (1, 1), 2)
    assert dice(empty, empty) == 1.0
    assert hausdorff(empty, empty) == 0.0 and hd95(empty, empty) == 0.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert hausdorff(full, empty) == math.inf and hausdorff(empty, full) == math.inf
    assert hd95(full, empty) == math.inf
    assert components(empty) == 0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 3])
def test_hausdorff_of_shifted_cubes_is_shift_times_spacing(axis, shift):
    start = [4, 4, 4]
    start[axis] += shift
    a, b = _cube(), _cube(start=tuple(start))
    assert hausdorff(a, b, SPACING) == pytest.approx(shift * SPACING[axis])
    assert hausdorff(b, a, SPACING) == pytest.approx(shift * SPACING[axis])
    # wrong-convention guard: spacing applied to other axes gives another answer
    rolled = (SPACING[1], SPACING[2], SPACING[0])
    assert hausdorff(a, b, rolled) != pytest.approx(shift * SPACING[axis])
    assert 0 < hd95(a, b, SPACING) <= hausdorff(a, b, SPACING)


def test_single_voxels_euclidean_in_mm():
    a, b = np.zeros((9, 9, 9), bool), np.zeros((9, 9, 9), bool)
    a[1, 2, 3] = True
    b[4, 0, 7] = True
    expected = math.sqrt((3 * 2.0) ** 2 + (2 * 0.5) ** 2 + (4 * 0.7) ** 2)
    assert hausdorff(a, b, SPACING) == pytest.approx(expected)
    assert hd95(a, b, SPACING) == pytest.approx(expected)


def test_hd95_ignores_a_single_outlier():
    target = _cube((12, 12, 12), (2, 2, 2), 5)
    pred = target.copy()
    pred[11, 11, 11] = True  # one stray voxel far away
    far = math.dist(np.multiply((11, 11, 11), SPACING), np.multiply((6, 6, 6), SPACING))
    assert hausdorff(pred, target, SPACING) == pytest.approx(far)
    assert hd95(pred, target, SPACING) == 0.0


def _brute_force(a, b, spacing):
    """Reference: surface voxels by explicit neighbour test, all pairwise distances."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(mask.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis)[tuple(slice(1, -1) for _ in mask.shape)]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    pa, pb = surface(a), surface(b)
    d = cdist(pa, pb)
    both = np.concatenate([d.min(1), d.min(0)])
    return both.max(), np.percentile(both, 95)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hausdorff_matches_brute_force_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (10, 12, 11)
    a = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05
    b = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.05
    hd, p95 = _brute_force(a, b, SPACING)
    assert hausdorff(a, b, SPACING) == pytest.approx(hd)
    assert hd95(a, b, SPACING) == pytest.approx(p95)


def test_two_dimensional_and_default_spacing():
    a, b = _cube((8, 8), (1, 1), 3), _cube((8, 8), (1, 4), 3)
    assert hausdorff(a, b) == pytest.approx(3.0)
    assert hausdorff(a, b, (1.0, 0.25)) == pytest.approx(0.75)


def test_components_connectivity():
    edge = np.zeros((5, 5, 5), bool)
    edge[1, 1, 1] = edge[1, 2, 2] = True  # share an edge
    corner = np.zeros((5, 5, 5), bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True  # share a corner only
    assert [components(edge, c) for c in (1, 2, 3)] == [2, 1, 1]
    assert [components(corner, c) for c in (1, 2, 3)] == [2, 2, 1]
    diagonal = np.eye(4, dtype=np.uint8)
    assert components(diagonal) == 4 and components(diagonal, connectivity=2) == 1
    with pytest.raises(ValueError, match=r"connectivity must be an int in 1..2"):
        components(diagonal, connectivity=3)


def test_mask_errors():
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(4,\)"):
        dice(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"pred must be a binary mask \(0/1\), but holds 0.3"):
        dice(np.array([0.3, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"target must be a binary mask .* holds 255"):
        hausdorff(np.array([0, 1]), np.array([255, 1]))
    with pytest.raises(ValueError, match="spacing must be 2 positive numbers"):
        hausdorff(np.ones((2, 2)), np.ones((2, 2)), (1.0, 0.0))


def test_folding_percent_closed_forms():
    # u(x) = A x with 1 + a < 0 along z: every voxel folds; a contraction never does.
    z = np.arange(6, dtype=np.float64)[:, None, None] * np.ones((6, 7, 5))
    folding = np.stack([-2.0 * z, 0 * z, 0 * z])  # det = 1 - 2 = -1
    assert folding_percent(folding) == 100.0
    assert folding_percent(0.5 * folding) == 100.0  # det = 0 counts as folded
    assert folding_percent(0.25 * folding) == 0.0  # det = 0.5
    batch = torch.from_numpy(0.25 * folding).unsqueeze(0)
    assert folding_percent(batch, "digital", batched=True) == 0.0


def test_folding_percent_takes_the_layout_it_is_told():
    # (3, 2, 8, 9) is one 3D field or a batch of three 2D ones; both fold everywhere here
    field = np.zeros((3, 2, 8, 9))
    field[0] = -2.0 * np.arange(2.0)[:, None, None]  # 3D: ∂u_z/∂z = -2, det = -1
    assert folding_percent(field) == 100.0
    flat = np.zeros((3, 2, 8, 9))
    flat[:, 0] = -2.0 * np.arange(8.0)[:, None]  # 2D: ∂u_y/∂y = -2, det = -1
    assert folding_percent(flat, batched=True) == 100.0
    with pytest.raises(ValueError, match=r"\(n, \*S\).*batched=True"):
        folding_percent(np.zeros((2, 2, 8, 9)))  # n = 2 but three spatial axes
    with pytest.raises(ValueError, match=r"\(B, n, \*S\)"):
        folding_percent(np.zeros((3, 8, 9)), batched=True)


def test_folding_percent_matches_flow_for_shapes_and_schemes():
    rng = np.random.default_rng(0)
    field = torch.from_numpy(
        ndimage.gaussian_filter(rng.normal(size=(2, 3, 8, 9, 7)), (0, 0, 1, 1, 1)) * 6
    )
    for scheme in ("central", "digital"):
        reference = 100 * folding_fraction(field, scheme)
        assert 0 < float(reference.mean()) < 100
        assert folding_percent(field, scheme, batched=True) == pytest.approx(
            float(reference.mean())
        )
        assert folding_percent(field[1].numpy(), scheme) == pytest.approx(float(reference[1]))
    flat = field[:, :2, 0]  # (B, 2, H, W): a batch of 2D fields
    assert folding_percent(flat, batched=True) == pytest.approx(
        100 * float(folding_fraction(flat).mean())
    )
    assert folding_percent(flat[0]) == pytest.approx(100 * float(folding_fraction(flat[:1])[0]))


def test_evaluate_case():
    a, b = _cube(), _cube(start=(5, 4, 4))
    result = evaluate_case(a, b, SPACING)
    assert set(result) == {"dice", "hausdorff", "hd95", "components", "components_full"}
    assert result["dice"] == pytest.approx(2 * 5 / 12)
    assert result["hausdorff"] == pytest.approx(2.0)
    assert result["components"] == result["components_full"] == 1
    two = a | _cube(start=(12, 12, 12), size=2)
    with_flow = evaluate_case(two, b, SPACING, displacement=np.zeros((3, 16, 16, 16)))
    assert set(with_flow) == set(METRIC_KEYS)
    assert with_flow["folding_central"] == with_flow["folding_digital"] == 0.0
    assert with_flow["components"] == 2
    central = evaluate_case(two, b, SPACING, np.zeros((3, 16, 16, 16)), scheme="central")
    assert "folding_central" in central and "folding_digital" not in central
    with pytest.raises(ValueError, match="scheme must be some of"):
        evaluate_case(a, b, scheme="forward")


def test_evaluate_case_leaves_unlabelled_voxels_out():
    pred, truth = _cube(), _cube().astype(np.uint8)
    truth[0, 0, 0] = 255  # one unlabelled voxel, far from the cube: not predicted, not counted
    result = evaluate_case(pred, truth, SPACING, ignore_value=255)
    assert result["dice"] == 1.0 and "hausdorff" not in result and "hd95" not in result
    assert evaluate_case(pred, truth, SPACING)["dice"] < 1.0  # 255 counts as inside otherwise
    det = np.ones((16, 16, 16))
    det[:4] = -1.0  # a quarter folded, known only from det J (predict --jacobian's file)
    assert evaluate_case(pred, truth, det=det)["folding_central"] == pytest.approx(25.0)
    summary = summarise([{"dice": 1.0}, {"dice": 0.5, "hausdorff": np.inf}])
    assert summary["dice"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert summary["hausdorff"]["mean"] == np.inf and summary["hausdorff"]["n"] == 1


def test_topology_report_counts_both_connectivities_and_both_fold_tests():
    mask = np.zeros((6, 6, 6), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # touching at a corner only: 2 faces apart, 1 in 26
    fold = np.zeros((3, 6, 6, 6))
    fold[2, :, :, 3:] = -3.0  # x folds back onto itself between columns 2 and 3
    report = topology_report(mask, fold)
    assert report["components"] == 2 and report["components_full"] == 1
    assert report["connectivity"] == [6, 26] and not report["holds"]
    for scheme in ("central", "digital"):
        assert report[f"folding_{scheme}"] == pytest.approx(folding_percent(fold, scheme))
        assert report[f"folding_{scheme}"] > 0
    one = topology_report(np.pad(np.ones((2, 2), bool), 1), np.zeros((2, 4, 4)))
    assert one == {"folding_central": 0.0, "folding_digital": 0.0, "components": 1,
                   "components_full": 1, "connectivity": [4, 8], "holds": True}
    assert topology_report(mask)["folding_digital"] is None  # no flow (a U-Net)
    with pytest.raises(ValueError, match=r"displacement must have shape \(3, 6, 6, 6\)"):
        topology_report(mask, np.zeros((2, 6, 6)))
    with pytest.raises(ValueError, match="segmentation must be a binary mask"):
        topology_report(mask * 0.5)
