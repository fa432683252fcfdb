"""The paper's Table 2 protocol on 2D silhouettes of Fashion-MNIST; one JSON file per run.

    python scripts/experiments/silhouettes.py --out results/                    # prior + 4 models
    python scripts/experiments/silhouettes.py --out results/ --smoothness 0.01  # flow models, λ
    python scripts/experiments/silhouettes.py --out results/ --report           # Markdown tables

Data: seeded draws of ``--train`` training and ``--test`` test images (from the two official
splits) of the ``--classes``; each 28×28 image is zero-padded to 32×32 (the U-Net needs multiples
of 16) and divided by 255. Its label is the silhouette: image > ``--threshold``, holes filled
(``scipy.ndimage.binary_fill_holes``), and where that leaves several face-connected components
only the largest is kept (the prior is one blob without holes). Pixels are 1 mm. Every model is
trained on whole images (32×32 patches, batch 1, no model selection) and tested on whole images.
A run whose JSON already exists is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from report import _table  # same folder
from scipy import ndimage
from segmentation import TABLE2, machine, train_and_test  # same folder

from napari_difftt.core.classification.digits import load_digits
from napari_difftt.core.data import Sample
from napari_difftt.core.metrics import evaluate_case, summarise
from napari_difftt.core.train import TrainConfig, build_model, prior_masks

FASHION = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
SIZE = 32  # padded image edge (pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    parser.add_argument("--data", default=FASHION, help=f"Fashion-MNIST folder ({FASHION})")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8])
    parser.add_argument("--train", type=int, default=300, help="training images (default 300)")
    parser.add_argument("--test", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--threshold", type=float, default=0.05, help="silhouette: image > this")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smoothness", type=float, default=0.0, help="λ of λ‖∇u‖² (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image draws")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="run only these rows (prior unet stt svf bch)")
    parser.add_argument("--report", action="store_true", help="print the Markdown tables")
    args = parser.parse_args()
    if args.report:
        return report(args.out)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train, train_stats = silhouettes(args, "train", args.train, args.seed)
    test, test_stats = silhouettes(args, "test", args.test, args.seed + 1)
    data = {"train": train_stats, "test": test_stats}
    for split, stats in data.items():
        print(
            f"{split}: {stats['per_class']}, {stats['several_components_before_largest']} "
            "with several components before keeping the largest",
            flush=True,
        )
    tag = f"silhouettes_l{args.smoothness:g}" if args.smoothness else "silhouettes"
    rows = ["prior", *TABLE2]
    for name in rows:
        if args.only and name not in args.only:
            continue
        if name in ("prior", "unet") and args.smoothness:
            continue  # λ‖∇u‖² needs a displacement: these rows are the same at any λ
        path = args.out / f"{tag}_{name}.json"
        if path.exists():
            print(f"{path} exists: skipped", flush=True)
            continue
        record = prior_only(train, test) if name == "prior" else run(name, train, test, args)
        record.update(data=data, protocol=protocol(args), machine=machine())
        path.write_text(json.dumps(record, indent=2) + "\n")
        dice = record["summary"]["dice"]
        print(f"{name}: Dice {dice['mean']:.4f} ± {dice['std']:.4f} → {path}", flush=True)


def silhouettes(args, split: str, count: int, seed: int) -> tuple[list[Sample], dict]:
    """``count`` seeded images of ``args.classes`` from ``split`` as padded Samples, and counts
    of what the label construction did (several components before keeping the largest)."""
    digits = load_digits(args.data, split)
    pool = np.flatnonzero(np.isin(digits.labels, args.classes))
    if count > len(pool):
        raise ValueError(f"--{split} {count} exceeds the {len(pool)} {split} images of the classes")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))
    pad = (SIZE - digits.images.shape[1]) // 2, (SIZE - digits.images.shape[2]) // 2
    samples, several, per_class = [], 0, {}
    for index in chosen:
        image = np.pad(
            digits.images[index],
            [(p, SIZE - s - p) for p, s in zip(pad, digits.images.shape[1:], strict=True)],
        )
        image = image.astype(np.float32) / 255.0
        mask, parts = silhouette(image, args.threshold)
        several += parts > 1
        name = CLASSES[digits.labels[index]]
        per_class[name] = per_class.get(name, 0) + 1
        samples.append(Sample(image, mask, (1.0, 1.0), f"{split}{index}_{name}"))
    stats = {"images": count, "several_components_before_largest": int(several),
             "per_class": per_class, "indices": chosen.tolist()}  # fmt: skip
    return samples, stats


def silhouette(image: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """The filled silhouette (uint8 {0, 1}) of ``image`` > ``threshold``: its largest face-
    connected component; and the number of components there were."""
    filled = ndimage.binary_fill_holes(image > threshold)
    labelled, parts = ndimage.label(filled)  # face connectivity, as core.metrics.components
    if parts > 1:
        sizes = np.bincount(labelled.ravel())[1:]
        filled = labelled == 1 + int(np.argmax(sizes))
    return filled.astype(np.uint8), int(parts)


def run(name: str, train: list[Sample], test: list[Sample], args) -> dict:
    """Train one model of Table 2 on ``train`` and test it on every image of ``test``."""
    config = TrainConfig(
        iterations=args.iterations,
        patch_size=(SIZE, SIZE),
        width=args.width,
        lr=args.lr,
        smoothness=args.smoothness,
        seed=0,
        device="cpu",
        checkpoint=None,
        **TABLE2[name],
    )
    trainer, result, seconds, cases = train_and_test(name, config, train, test, every=100)
    prior = getattr(trainer.model, "prior", None)
    return {
        "row": name,
        "settings": TABLE2[name],
        "config": config.to_dict(),
        "train_seconds": seconds,
        "final_loss": result.loss,
        "cases": cases,
        "summary": summarise(cases),
        "prior": prior.to_dict() if prior is not None else None,
    }


def prior_only(train: list[Sample], test: list[Sample]) -> dict:
    """The reference row: the prior fitted to the training masks, thresholded, no network."""
    config = TrainConfig(kind="bch", patch_size=(SIZE, SIZE), prior="diag")
    prior = build_model(config, prior_masks(train, config.ignore_value)).prior
    mask = (prior.on_grid((SIZE, SIZE))[0, 0].detach().numpy() > 0.5).astype(np.uint8)
    cases = [{"name": s.name, **evaluate_case(mask, s.labels, s.spacing,
                                              ignore_value=config.ignore_value)} for s in test]
    return {"row": "prior", "cases": cases, "summary": summarise(cases), "train_seconds": 0.0,
            "prior": prior.to_dict()}  # fmt: skip


def protocol(args) -> dict:
    keys = ("classes", "train", "test", "threshold", "iterations", "width", "lr", "smoothness",
            "seed")  # fmt: skip
    return {key: getattr(args, key) for key in keys}


def report(folder: Path) -> None:
    """Markdown tables of every silhouettes_*.json in ``folder`` (λ = 0, then λ > 0)."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("silhouettes_*.json"))}
    labels = {"prior": "fitted prior only (no network)", **{k: k for k in TABLE2}}
    lambdas = sorted({r.get("protocol", {}).get("smoothness", 0.0) for r in runs.values()})
    for smoothness in lambdas:
        tag = f"silhouettes_l{smoothness:g}" if smoothness else "silhouettes"
        rows = {}
        for name in labels:
            record = runs.get(f"{tag}_{name}") or runs.get(f"silhouettes_{name}")
            if record is not None and (name in ("prior", "unet") or f"{tag}_{name}" in runs):
                rows[name] = record
        print(f"λ = {smoothness:g}\n\n{_table(rows, labels)}\n")


if __name__ == "__main__":
    main()
