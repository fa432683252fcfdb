"""Sample data: seeded offline phantoms with labels, spacing as scale, opened through napari."""

from __future__ import annotations

import numpy as np

from napari_difftt._sample_data import (
    PHANTOM_2D,
    PHANTOM_3D,
    PHANTOM_3D_ORIGIN,
    phantom_2d,
    phantom_3d,
)
from napari_difftt.layer_metadata import META_KEY, layer_affine


def test_phantoms_are_seeded_and_carry_their_spacing():
    for make, (shape, _, spacing) in ((phantom_3d, PHANTOM_3D), (phantom_2d, PHANTOM_2D)):
        (image, image_kw, image_type), (labels, labels_kw, labels_type) = make()
        assert (image_type, labels_type) == ("image", "labels")
        assert image.shape == labels.shape == shape
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1}
        assert image_kw["scale"] == labels_kw["scale"] == spacing
        assert image_kw["units"] == ("mm",) * len(shape)
        affine = image_kw["metadata"][META_KEY]["affine"]
        # core.io convention: index (z, y, x) → world (x, y, z); spacing on the anti-diagonal
        np.testing.assert_allclose(np.abs(affine[:3, :3]).sum(0)[3 - len(shape):], spacing)
        again = make()
        np.testing.assert_array_equal(again[0][0], image)
        np.testing.assert_array_equal(again[1][0], labels)


def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-difftt", "phantom_3d")
    image, labels = viewer.layers["phantom"], viewer.layers["phantom labels"]
    assert image.data.shape == labels.data.shape == PHANTOM_3D[0]
    np.testing.assert_allclose(image.scale, PHANTOM_3D[2])
    np.testing.assert_allclose(image.translate, PHANTOM_3D_ORIGIN)
    expected = np.eye(4)[[2, 1, 0, 3]] @ np.diag([*PHANTOM_3D[2], 1.0])
    expected[:3, 3] = PHANTOM_3D_ORIGIN[::-1]  # world (x, y, z) of voxel 0
    np.testing.assert_allclose(layer_affine(labels), expected)


def test_the_3d_sample_has_the_bundled_models_spacing():
    """The phantom is drawn in voxel space like the training phantoms: its spacing is the
    models' own, so Run model does not warn about the spacing of the plugin's own sample."""
    from napari_difftt.core.inference import default_checkpoint, spacing_mismatch
    from napari_difftt.core.io import load_checkpoint

    checkpoint = load_checkpoint(default_checkpoint())
    assert spacing_mismatch(PHANTOM_3D[2], checkpoint.get("spacing"), "phantom") is None


def test_the_sample_opens_without_importing_torch():
    """The sample is numpy and scipy only: torch (seconds to import) waits for the first
    widget that needs it."""
    import subprocess
    import sys

    code = ("import sys; from napari_difftt._sample_data import phantom_2d, phantom_3d; "
            "phantom_3d(); phantom_2d(); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'napari', 'qtpy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_ground_truth_is_green_on_clear_as_a_colour_cycle(make_napari_viewer):
    """A colour cycle, which napari draws at once (a {value: colour} map compiles a numba
    dictionary the first time: seconds), shows 0 clear and the organ lime."""
    from napari.utils.colormaps import CyclicLabelColormap

    viewer = make_napari_viewer()
    viewer.open_sample("napari-difftt", "phantom_3d")
    colormap = viewer.layers["phantom labels"].colormap
    assert isinstance(colormap, CyclicLabelColormap)
    np.testing.assert_allclose(colormap.map(np.array([0, 1])), [[0, 0, 0, 0], [0, 1, 0, 1]])
