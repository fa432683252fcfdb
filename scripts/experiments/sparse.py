"""Sparse annotations (issue 18): train on volumes annotated on 1 or 3 slices, test on dense
labels; one JSON file per (data set, annotation, row).

    python scripts/experiments/sparse.py phantom32 --out R --annotation 1     # 3D ellipsoids
    python scripts/experiments/sparse.py lobed32 --out R --annotation 3       # 3D lobed organs
    python scripts/experiments/sparse.py silhouettes --out R --annotation 1   # 2D, rows
    python scripts/experiments/sparse.py report --out R                       # Markdown tables

Data: ``--train`` training and ``--test`` test phantoms of 32³ (seeds 100…; ``make_phantom``
with organ ellipsoid or lobed) or the 2D Fashion-MNIST silhouettes (scripts/experiments/
silhouettes.py, 300 / 100). Annotation ``dense`` keeps every label; ``1`` and ``3`` paint the
organ on that many evenly spaced slices along axis 0 (core.slices.evenly_spaced_slices: the
middle of the organ's extent; its quartiles) and turn the painting into training labels
(core.slices.painted_slices: those slices whole, the rest unlabelled, 255).

Rows, the same budget each (``--iterations`` Adam steps on whole volumes, batch 1, lr 1e-3,
cosine, seed ``--seed`` (0), width ``--width``; every other setting is TrainConfig's default):

* ``bch`` — the defaults (the prior fitted to the slices: core.slices.fit_to_slices);
* ``bch_fine`` — the same with the B-spline lattice of dense labels (2 voxels) forced; by
  default sparse labels get 4 (``core.train.sparse_lattice``);
* ``bch_centre`` — the same with ``prior_init="centre"``: the centred prior, which is what
  training fell back to on sparse labels before;
* ``bch_tuned`` — fine-tuned from the bundled model of the dimensionality (``init``; its
  architecture, the prior re-fitted to the slices);
* ``unet`` — a U-Net on the same labels; ``unet_post`` — its predictions post-processed the way
  a user would first try: the largest face-connected component, holes filled.

Every test volume is predicted whole and scored against its dense labels with the topology
report (Dice, HD95 mm, % det J ≤ 0 central and digital, components at face and full
connectivity). A run whose JSON exists is skipped. ~1–2 min per 3D row on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_difftt.core.data import Sample, make_phantom, normalise_intensity
from napari_difftt.core.inference import default_checkpoint, predict_volume
from napari_difftt.core.metrics import evaluate_case, topology_report
from napari_difftt.core.slices import evenly_spaced_slices, paint, painted_slices
from napari_difftt.core.train import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from segmentation import machine, train_timed  # same folder
from velocity_ablation import summarise

ROWS = ("bch", "bch_fine", "bch_centre", "bch_tuned", "unet", "unet_post")
DATASETS = ("phantom32", "lobed32", "silhouettes")
ANNOTATIONS = ("dense", "1", "3")
BUDGET = {"iterations": 200, "width": 4, "lr": 1e-3}  # the same for every row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=(*DATASETS, "report"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    parser.add_argument("--annotation", choices=ANNOTATIONS, default="1")
    parser.add_argument("--train", type=int, default=8, help="3D training volumes (default 8)")
    parser.add_argument("--test", type=int, default=6, help="3D test volumes (default 6)")
    parser.add_argument("--iterations", type=int, default=BUDGET["iterations"])
    parser.add_argument("--width", type=int, default=BUDGET["width"])
    parser.add_argument("--lr", type=float, default=BUDGET["lr"], help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data stay the same)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=ROWS, help="run only these rows")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=JSON",
                        help="TrainConfig fields for every row, e.g. pose_loss=3 keep_prior=true")
    args = parser.parse_args()
    if args.dataset == "report":
        return report(args.out)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load(args.dataset, args.train, args.test)
    train = annotate(train, args.annotation)
    for row in args.only or ROWS:
        if row == "unet_post":
            continue  # written with the unet row: the same model, post-processed
        path = args.out / f"{args.dataset}_{args.annotation}_{row}.json"
        if path.exists():
            print(f"{path} exists: skipped", flush=True)
            continue
        records = run(row, train, test, args)
        for name, record in records.items():
            target = args.out / f"{args.dataset}_{args.annotation}_{name}.json"
            target.write_text(json.dumps(record, indent=1) + "\n")
            s = record["summary"]
            print(f"{target.stem}: Dice {s['dice']:.3f} HD95 {s['hd95']:.2f} central "
                  f"{s['central_max']:.4f}% digital {s['digital_max']:.4f}% one component "
                  f"{s['single_face']}/{len(test)} ({record['train_seconds']:.0f} s)", flush=True)


def load(dataset: str, n_train: int, n_test: int) -> tuple[list[Sample], list[Sample]]:
    """Dense training and test samples of ``dataset``."""
    if dataset == "silhouettes":
        from silhouettes import FASHION, silhouettes  # same folder

        options = argparse.Namespace(data=FASHION, threshold=0.05, classes=[0, 1, 2, 3, 4, 6, 8])
        return (silhouettes(options, "train", 300, 0)[0], silhouettes(options, "test", 100, 1)[0])
    organ = "lobed" if dataset.startswith("lobed") else "ellipsoid"

    def phantoms(first: int, count: int) -> list[Sample]:
        out = []
        for seed in range(first, first + count):
            phantom = make_phantom((32, 32, 32), seed=seed, organ=organ)
            out.append(Sample(normalise_intensity(phantom.image), phantom.labels,
                              phantom.spacing, f"{organ}{seed}"))
        return out

    return phantoms(100, n_train), phantoms(100 + n_train, n_test)


def annotate(samples: list[Sample], annotation: str) -> list[Sample]:
    """The training labels of ``annotation``: dense, or painted on 1 / 3 slices along axis 0."""
    if annotation == "dense":
        return samples
    out = []
    for sample in samples:
        painted = paint(sample.labels, evenly_spaced_slices(sample.labels, int(annotation)))
        out.append(Sample(sample.image, painted_slices(painted, 0).labels, sample.spacing,
                          sample.name))
    return out


def run(row: str, train: list[Sample], test: list[Sample], args) -> dict[str, dict]:
    """Train ``row``, test it; the JSON records (the unet row also gives unet_post)."""
    trainer, result, seconds = train_timed(row, row_config(row, train, args), train)
    model = trainer.model
    cases = {row: [], "unet_post": []}
    for sample in test:
        prediction = predict_volume(model, sample.image, normalise=False)
        cases[row].append(score(prediction.segmentation, prediction.displacement,
                                prediction.topology, sample))
        if row == "unet":
            cleaned = largest_filled(prediction.segmentation)
            cases["unet_post"].append(score(cleaned, None, topology_report(cleaned), sample))
    prior = getattr(model, "prior", None)
    return {name: {"row": name, "config": trainer.config.to_dict(), "train_volumes": len(train),
                   "labelled_fraction": labelled_fraction(train), "train_seconds": seconds,
                   "final_loss": result.loss, "cases": found, "summary": summarise(found),
                   "prior": prior.to_dict() if prior is not None else None,
                   "machine": machine()}
            for name, found in cases.items() if found}


def row_config(row: str, train: list[Sample], args) -> TrainConfig:
    """The training settings of ``row`` on ``train``: ``args.iterations``, ``width``, ``lr``,
    ``seed`` and the ``--set`` overrides, every other field TrainConfig's default."""
    settings = {"kind": "unet"} if row == "unet" else {}
    if row == "bch_centre":
        settings["prior_init"] = "centre"
    if row == "bch_fine":
        settings["velocity_lattice"] = 2  # the dense default, which sparse runs do not take
    if row == "bch_tuned":
        settings["init"] = str(default_checkpoint(train[0].image.ndim))
    settings.update(overrides(args.set))
    return TrainConfig(iterations=args.iterations, patch_size=train[0].image.shape,
                       width=args.width, lr=args.lr, seed=args.seed, device="cpu", **settings)


def overrides(pairs: list[str]) -> dict:
    """``["pose_loss=3", "keep_prior=true"]`` → ``{"pose_loss": 3, "keep_prior": True}``."""
    settings = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or field not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"--set takes FIELD=JSON with a TrainConfig field, got {pair!r}")
        settings[field] = json.loads(value)
    return settings


def score(segmentation, displacement, topology, sample: Sample) -> dict:
    return {"name": sample.name, **evaluate_case(segmentation, sample.labels, sample.spacing,
                                                 displacement, ignore_value=255,
                                                 topology=topology)}


def largest_filled(segmentation: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a binary segmentation, holes filled."""
    labelled, count = ndimage.label(segmentation)
    if count == 0:
        return segmentation.astype(np.uint8)
    sizes = np.bincount(labelled.ravel())[1:]
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(sizes))).astype(np.uint8)


def labelled_fraction(samples: list[Sample]) -> float:
    return float(np.mean([np.mean(s.labels != 255) for s in samples]))


def report(folder: Path) -> None:
    """One Markdown table per data set: rows × annotations, with the targets' ratios."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    def dice(dataset: str, annotation: str, row: str) -> float | None:
        record = records.get(f"{dataset}_{annotation}_{row}")
        return None if record is None else record["summary"]["dice"]

    for dataset in DATASETS:
        unet_dense = dice(dataset, "dense", "unet")
        lines = []
        for annotation in ANNOTATIONS:
            for row in ROWS:
                record = records.get(f"{dataset}_{annotation}_{row}")
                if record is None:
                    continue
                s = record["summary"]
                # bch_fine on dense labels is bch: the dense default lattice
                reference = "bch" if row == "bch_fine" else row
                own = dice(dataset, "dense", reference) if row.startswith("bch") else None
                ratio = f"{s['dice'] / own:.3f}" if own else "–"
                gap = f"{s['dice'] - unet_dense:+.3f}" if unet_dense else "–"
                lines.append([annotation, row, f"{s['dice']:.3f} ± {s['dice_std']:.3f}",
                              f"{s['hd95']:.2f}", ratio, gap, f"{s['central_max']:.4f}",
                              f"{s['digital_max']:.4f}",
                              f"{s['single_face']}/{len(record['cases'])}",
                              f"{record['train_seconds']:.0f}"])
        if lines:
            print(f"\n### {dataset}\n")
            header = ["slices", "row", "Dice", "HD95 mm", "× own dense", "− U-Net dense",
                      "max % central", "max % digital", "one component", "train s"]
            print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
            print("\n".join("| " + " | ".join(line) + " |" for line in lines))


if __name__ == "__main__":
    main()
