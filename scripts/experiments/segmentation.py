"""Reduced 3D-phantom versions of the paper's Tables 2, 3 and 4; one JSON file per run.

    python scripts/experiments/segmentation.py table2 --out results/   # unet, stt, svf, bch
    python scripts/experiments/segmentation.py table3 --out results/   # 7 prior rows on bch
    python scripts/experiments/segmentation.py table4 --out results/   # inference times
    python scripts/experiments/report.py results/ > tables.md   # pasted into docs/RESULTS.md

Every run trains on the same seeded phantoms (``--train`` volumes, seeds ``--seed``…) and is
tested on held-out phantoms (the following seeds) with whole-volume prediction, no model
selection. A run whose JSON already exists is skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from napari_difftt.core.data import load_nifti_folder, make_phantom, write_phantom_dataset
from napari_difftt.core.inference import predict_volume
from napari_difftt.core.metrics import evaluate_case, summarise
from napari_difftt.core.train import TrainConfig, Trainer

# Table 2: the four models (the bch row uses the prior of Table 3's "μ, diag Σ" row)
TABLE2 = {
    "unet": {"kind": "unet", "prior": "diag"},
    "stt": {"kind": "stt", "prior": "diag"},
    "svf": {"kind": "svf", "prior": "diag"},
    "bch": {"kind": "bch", "prior": "diag"},
}
# Table 3: what the bch model's generalised Gaussian prior learns (Σ, μ fitted to the masks first)
TABLE3 = {
    "fixed": {"kind": "bch", "prior": "fixed"},
    "mean": {"kind": "bch", "prior": "mean"},
    "sigma": {"kind": "bch", "prior": "sigma"},
    "diag": {"kind": "bch", "prior": "diag"},
    "full": {"kind": "bch", "prior": "full"},
    "diag_beta": {"kind": "bch", "prior": "diag", "train_beta": True},
    "full_beta": {"kind": "bch", "prior": "full", "train_beta": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("table2", "table3", "table4", "prior"))
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    parser.add_argument("--data", type=Path, help="phantom data set folder (default OUT/data)")
    parser.add_argument("--train", type=int, default=8, help="training volumes (default 8)")
    parser.add_argument("--test", type=int, default=6, help="test volumes (default 6)")
    parser.add_argument("--size", type=int, default=32, help="phantom edge in voxels (default 32)")
    parser.add_argument("--patch", type=int, default=16, help="patch edge in voxels (default 16)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smoothness", type=float, default=0.0, help="λ of λ‖∇u‖² (default 0)")
    parser.add_argument("--seed", type=int, default=100, help="first phantom seed (default 100)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="run only these rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    if not (data / "imagesTs").is_dir():
        write_phantom_dataset(
            data, n_train=args.train, n_test=args.test, shape=(args.size,) * 3, seed=args.seed
        )
    if args.table == "table4":
        return time_inference(args)
    if args.table == "prior":
        return prior_only(args, data)
    rows = TABLE2 if args.table == "table2" else TABLE3
    train = load_nifti_folder(data / "imagesTr", data / "labelsTr")
    test = load_nifti_folder(data / "imagesTs", data / "labelsTs")
    for name, settings in rows.items():
        if args.only and name not in args.only:
            continue
        if settings["kind"] == "unet" and args.smoothness:
            continue  # λ‖∇u‖² needs a displacement: the U-Net row is the same at any λ
        result_path = args.out / f"{tag(args)}_{name}.json"
        if result_path.exists():
            print(f"{result_path} exists: skipped", flush=True)
            continue
        run(name, settings, train, test, args, result_path)


def run(name, settings, train, test, args, result_path: Path) -> None:
    """Train one configuration, test it on every held-out volume, write its JSON."""
    config = TrainConfig(
        iterations=args.iterations,
        patch_size=(args.patch,) * 3,
        width=args.width,
        lr=args.lr,
        smoothness=args.smoothness,
        seed=0,
        device="cpu",
        checkpoint=str(args.out / f"{tag(args)}_{name}.pt"),
        **settings,
    )
    trainer, result, train_seconds, cases = train_and_test(name, config, train, test, every=25)
    prior = getattr(trainer.model, "prior", None)
    record = {
        "row": name,
        "table": args.table,
        "settings": settings,
        "config": config.to_dict(),
        "train_volumes": len(train),
        "test_volumes": len(test),
        "train_seconds": train_seconds,
        "final_loss": result.loss,
        "cases": cases,
        "summary": summarise(cases),
        "prior": prior.to_dict() if prior is not None else None,
        "machine": machine(),
    }
    result_path.write_text(json.dumps(record, indent=2) + "\n")
    dice = record["summary"]["dice"]
    print(
        f"{name}: Dice {dice['mean']:.4f} ± {dice['std']:.4f} in {train_seconds:.0f} s", flush=True
    )


def train_timed(name: str, config: TrainConfig, train, every: int = 50):
    """Train ``config`` on ``train``, the loss printed every ``every`` steps; returns (trainer
    with its model in eval mode, TrainResult, training seconds)."""
    started = time.perf_counter()
    trainer = Trainer(config, train)
    result = trainer.run(
        callback=lambda e: (
            e.step % every == 0
            and print(f"{name}: step {e.step}/{e.total} loss {e.loss:.4f}", flush=True)
        )
    )
    seconds = time.perf_counter() - started
    trainer.model.eval()
    return trainer, result, seconds


def train_and_test(name: str, config: TrainConfig, train, test, every: int):
    """Train ``config`` on ``train`` (:func:`train_timed`), then predict every case of ``test``
    whole; returns (trainer, TrainResult, training seconds, per-case metrics)."""
    trainer, result, seconds = train_timed(name, config, train, every)
    cases = []
    for sample in test:
        prediction = predict_volume(trainer.model, sample.image, normalise=False)
        metrics = evaluate_case(prediction.segmentation, sample.labels, sample.spacing,
                                prediction.displacement, ignore_value=255)
        cases.append({"name": sample.name, **metrics})
    return trainer, result, seconds, cases


def prior_only(args, data: Path) -> None:
    """The reference row: the prior fitted to the training masks, thresholded, no network."""
    from napari_difftt.core.train import build_model, prior_masks

    train = load_nifti_folder(data / "imagesTr", data / "labelsTr")
    test = load_nifti_folder(data / "imagesTs", data / "labelsTs")
    config = TrainConfig(kind="bch", patch_size=(args.patch,) * 3, width=args.width, prior="diag")
    prior = build_model(config, prior_masks(train, 255)).prior
    cases = []
    for sample in test:
        probability = prior.on_grid(sample.image.shape)[0, 0].detach().numpy()
        metrics = evaluate_case(probability > 0.5, sample.labels, sample.spacing,
                                ignore_value=255)
        cases.append({"name": sample.name, **metrics})
    record = {
        "row": "prior",
        "cases": cases,
        "summary": summarise(cases),
        "train_seconds": 0.0,
        "prior": prior.to_dict(),
        "machine": machine(),
    }
    (args.out / "prior_only.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"prior only: Dice {record['summary']['dice']['mean']:.4f}", flush=True)


def tag(args) -> str:
    """File stem of a sweep: ``table2``, with a penalty ``table2_l0.01``, with a longer run
    ``table2_l0.01_it800``, with other patches ``…_p32`` (defaults — λ = 0, 200 iterations,
    16³ patches — are left out)."""
    stem = args.table
    if args.smoothness:
        stem += f"_l{args.smoothness:g}"
    if args.iterations != 200:
        stem += f"_it{args.iterations}"
    if args.patch != 16:
        stem += f"_p{args.patch}"
    return stem


def time_inference(args) -> None:
    """Median whole-volume inference time of the Table 2 models (phantoms of 2 sizes) and of
    the bundled model (64³ and 128³)."""
    from napari_difftt.core.inference import default_checkpoint, load_model

    runs = []
    for name in TABLE2:
        checkpoint = args.out / f"{tag(args).replace('table4', 'table2')}_{name}.pt"
        if name == "unet" and not checkpoint.is_file():
            checkpoint = args.out / "table2_unet.pt"
        if not checkpoint.is_file():
            print(f"{checkpoint} missing: run table2 first", flush=True)
            continue
        runs += [(name, checkpoint, size) for size in (args.size, 2 * args.size)]
    runs += [("bch (bundled, width 8)", default_checkpoint(), size) for size in (64, 128)]
    records = []
    for name, checkpoint, size in runs:
        model = load_model(checkpoint, device="cpu").model
        image = make_phantom((size,) * 3, seed=999).image
        predict_volume(model, image)  # warm-up
        times = []
        for _ in range(3):
            started = time.perf_counter()
            predict_volume(model, image)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        records.append({"model": name, "shape": [size] * 3, "seconds": times, "median": median})
        print(f"{name} {size}³: {median:.2f} s", flush=True)
    summary = {"runs": records, "threads": torch.get_num_threads(), "machine": machine()}
    (args.out / "table4.json").write_text(json.dumps(summary, indent=2) + "\n")


def machine() -> dict:
    """What ran it: CPU model (lscpu), threads, load, versions."""
    import subprocess

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in lscpu.splitlines()
                if line.startswith("Model name")
            ),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return {
        "cpu": model,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    main()
