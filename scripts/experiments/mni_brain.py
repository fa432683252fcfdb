"""A real-anatomy test volume: the MNI ICBM152 2009c head and its brain envelope as NIfTI.

The project ships no anatomy and downloads nothing; this script turns the ICBM152 2009c
nonlinear symmetric templates that nilearn's wheel carries (1 mm, 197 × 233 × 189: T1, grey
and white matter probabilities) into an image and a brain-envelope label volume resampled to
``--size``³ voxels of ``--spacing`` mm (centred, zero-padded or cropped), written with their
affine. Obtain the templates once from the package registry, without installing nilearn:

    pip download nilearn==0.14.1 --no-deps -d /tmp/nl
    unzip -o -q -d /tmp/nl /tmp/nl/nilearn-0.14.1-py3-none-any.whl \\
        'nilearn/datasets/data/mni_icbm152_*'
    python scripts/experiments/mni_brain.py --templates /tmp/nl/nilearn/datasets/data \\
        --size 64 --spacing 3.0 --out /tmp/mni64

The envelope is grey + white matter ≥ 50 % after a σ = 2 mm Gaussian (closing the sulci), its
holes filled, its largest face-connected component kept: one component, no cavity — the
organ the method's topology guarantee is meant for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from sparse import largest_filled  # same folder

TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
ENVELOPE_SMOOTHING_MM = 2.0


def brain_envelope(grey: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Brain envelope ``(X, Y, Z)`` uint8 from tissue probabilities in [0, 255] on a 1 mm grid."""
    tissue = ndimage.gaussian_filter((grey.astype(np.float32) + white) / 255.0,
                                     ENVELOPE_SMOOTHING_MM)
    return largest_filled(tissue >= 0.5)


def resample(data: np.ndarray, spacing: float, size: int, order: int) -> np.ndarray:
    """``data`` on a 1 mm grid resampled to ``spacing`` mm, centred in a ``size``³ grid."""
    zoomed = ndimage.zoom(data.astype(np.float32), 1.0 / spacing, order=order, prefilter=False)
    out = np.zeros((size,) * 3, np.float32)
    source, target = [], []
    for extent in zoomed.shape:
        lo = (extent - size) // 2
        source.append(slice(max(lo, 0), max(lo, 0) + min(extent, size)))
        target.append(slice(max(-lo, 0), max(-lo, 0) + min(extent, size)))
    out[tuple(target)] = zoomed[tuple(source)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=Path, required=True,
                        help="folder holding the three mni_icbm152_*_converted.nii.gz files")
    parser.add_argument("--size", type=int, default=64, help="edge of the output grid, voxels")
    parser.add_argument("--spacing", type=float, default=3.0, help="output voxel size, mm")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()
    t1, grey, white = (nib.load(args.templates / TEMPLATE.format(name))
                       for name in ("t1", "gm", "wm"))
    envelope = brain_envelope(np.asarray(grey.dataobj), np.asarray(white.dataobj))
    image = resample(np.asarray(t1.dataobj) / 255.0, args.spacing, args.size, order=1)
    labels = resample(envelope, args.spacing, args.size, order=1) >= 0.5
    affine = np.diag([args.spacing] * 3 + [1.0])
    args.out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), args.out / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), args.out / "labels.nii.gz")
    print(f"{args.out}: {image.shape} at {args.spacing} mm, brain {int(labels.sum())} voxels")


if __name__ == "__main__":
    main()
