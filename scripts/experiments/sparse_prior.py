"""How well a prior fitted to 1 or 3 annotated slices matches the prior fitted to the dense mask.

For each phantom (ellipsoid and lobed organs, 3D 48³ and 2D 64²; and the first ``--cases``
Fashion-MNIST test silhouettes of scripts/experiments/sparse.py, 32²) the organ is "painted" on 1
slice (the middle of its extent along axis 0) or 3 (its quartiles), and each rule fits μ, Σ:

* ``centre`` — the centred default prior (radii 0.5), what training fell back to before;
* ``section`` — one slice's in-plane fit, through-plane radius = the in-plane radii's
  geometric mean (core.slices.fit_to_slices with one slice; with 3 slices: the middle one only);
* ``image`` — core.slices.fit_to_slices with the image: the ``section`` (one slice) or
  ``slabs`` (three) fit, deepened to the organ-like region of the image through the slices;
* ``slabs`` — core.slices.fit_to_slices on all the slices (slab-weighted moments);
* ``voxels`` — core.prior.fit_to_mask on the painted organ voxels as they are (3 slices only).

Reported against core.prior.fit_to_mask of the dense mask: |Δμ| in voxels, the mean relative
error of the principal radii, and the Dice of the two priors' ½-regions; also the Dice of each
½-region with the true mask. Numpy only, ~1 min:

    python scripts/experiments/sparse_prior.py --out scripts/experiments/results/sparse/prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_difftt.core.data import make_phantom
from napari_difftt.core.prior import GeneralisedGaussianPrior, fit_to_mask
from napari_difftt.core.slices import evenly_spaced_slices, fit_to_slices, paint, painted_slices

sys.path.insert(0, str(Path(__file__).parent))
SETS = {"ellipsoid3d": ((48, 48, 48), "ellipsoid"), "lobed3d": ((48, 48, 48), "lobed"),
        "ellipsoid2d": ((64, 64), "ellipsoid"), "lobed2d": ((64, 64), "lobed"),
        "silhouettes": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = {}
    for name in SETS:
        cases = _cases(name, args.cases)
        for count in (1, 3):
            rows: dict[str, list] = {}
            for image, mask in cases:
                dense = fit_to_mask(mask)
                for rule, prior in _rules(image, mask, count).items():
                    rows.setdefault(rule, []).append(_compare(prior, dense, mask))
            table[f"{name}_{count}slice"] = {
                rule: {key: float(np.mean([r[key] for r in values])) for key in values[0]}
                for rule, values in rows.items()}
            for rule, summary in table[f"{name}_{count}slice"].items():
                print(f"{name:12s} {count} slice(s) {rule:8s} "
                      + " ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cases": args.cases, "table": table}, indent=1))


def _cases(name: str, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, mask) of the first ``count`` cases of set ``name``."""
    if SETS[name] is None:
        from sparse import load  # same folder

        return [(s.image, s.labels) for s in load("silhouettes", 0, 0)[1][:count]]
    shape, organ = SETS[name]
    phantoms = (make_phantom(shape, seed=seed, organ=organ) for seed in range(count))
    return [(p.image, p.labels) for p in phantoms]


def _rules(image: np.ndarray, mask: np.ndarray,
           count: int) -> dict[str, GeneralisedGaussianPrior]:
    slices = evenly_spaced_slices(mask, count)
    labels = painted_slices(paint(mask, slices), 0).labels
    middle = painted_slices(paint(mask, slices[len(slices) // 2:][:1]), 0).labels
    rules = {"centre": GeneralisedGaussianPrior(mask.ndim),
             "section": fit_to_slices(middle, 0)}
    rules["image"] = fit_to_slices(labels, 0, image=image)
    if count > 1:
        rules["slabs"] = fit_to_slices(labels, 0)
        rules["voxels"] = fit_to_mask(labels == 1)
    return rules


def _compare(prior, dense, mask) -> dict:
    shape = mask.shape
    to_voxels = (np.asarray(shape) - 1) / 2.0
    mean_error = np.linalg.norm((prior.mean - dense.mean).detach().numpy() * to_voxels)
    radii = [np.sqrt(np.linalg.eigvalsh(p.covariance.detach().double().numpy()
                                        * np.outer(to_voxels, to_voxels)))
             for p in (prior, dense)]
    region, truth = (p.on_grid(shape)[0, 0].detach().numpy() > 0.5 for p in (prior, dense))
    return {"mean_voxels": float(mean_error),
            "radii_rel": float(np.mean(np.abs(radii[0] - radii[1]) / radii[1])),
            "dice_vs_dense_fit": _dice(region, truth), "dice_vs_mask": _dice(region, mask != 0)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


if __name__ == "__main__":
    main()
