"""``napari-difftt stn-bench``: the paper's rotated-digit classification experiment (Table 1).

Trains the small CNN and the same CNN behind TPS, diffeomorphic, non-diffeomorphic and
penalised diffeomorphic spatial transformers on MNIST-format digits rotated by U[−90°, 90°]
angles (Adam 1e-3, batch 64), and reports parameter counts, test accuracy (mean ± std over
repeats) and the % of test pixels whose predicted transform has det J ≤ 0 (central
differences; the stricter digital count is in the JSON). The default is a reduced run for a
CPU; ``--full`` is the paper's protocol (whole training set, 10 epochs) with 3 repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HELP = "rotated-digit classification: CNN vs TPS / diffeomorphic spatial transformers (Table 1)"

REDUCED = {"epochs": 3, "subset": 10000, "repeats": 1}
FULL = {"epochs": 10, "subset": None, "repeats": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, metavar="DIR",
                        help="folder with MNIST-format IDX files (train-*/t10k-*, optionally .gz)")
    parser.add_argument("--full", action="store_true",
                        help=f"paper protocol: {FULL['epochs']} epochs on the whole training set, "
                             f"{FULL['repeats']} repeats (default, reduced: {REDUCED['epochs']} "
                             f"epochs on {REDUCED['subset']} images, {REDUCED['repeats']} repeat)")
    parser.add_argument("--epochs", type=_positive, help="training epochs (overrides the preset)")
    parser.add_argument("--repeats", type=_positive, help="independent trainings per model")
    parser.add_argument("--subset", type=_positive, metavar="K",
                        help="train on a seeded random subset of K training images")
    parser.add_argument("--test-subset", type=_positive, metavar="K",
                        help="evaluate on K test images (default: the whole test split)")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="models to train (default: all): cnn tps2 tps3 tps5 tps12 tps16 "
                             "diffeo nondiffeo diffeo-reg")
    parser.add_argument("--batch-size", type=_positive, default=64,
                        help="training batch size (paper: 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    parser.add_argument("--max-angle", type=float, default=90.0,
                        help="rotations are uniform in [−A, A] degrees (paper: 90)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, angles and inits")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the results as JSON (rewritten after every model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.classification.digits import rotated_digits
    from ..core.classification.stn import MODEL_NAMES
    from ..core.classification.training import Schedule, summarise_runs, train_classifier
    from ..core.device import describe, resolve_device

    preset = FULL if args.full else REDUCED
    epochs = args.epochs or preset["epochs"]
    repeats = args.repeats or preset["repeats"]
    subset = args.subset or preset["subset"]
    models = args.models or list(MODEL_NAMES)
    unknown = [name for name in models if name not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MODEL_NAMES)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be a positive learning rate, got {args.lr}")
    schedules = [
        Schedule(epochs, args.batch_size, args.lr, seed=args.seed * 1000 + repeat)
        for repeat in range(repeats)
    ]
    if args.json is not None and not args.json.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {args.json}: folder {args.json.parent} does not exist")
    if args.json is not None:
        from ..core.io import check_output_file

        check_output_file(args.json, overwrite=True, what="--json")
    device = resolve_device(args.device)

    started = time.perf_counter()
    train = rotated_digits(args.data, "train", seed=args.seed, subset=subset,
                           max_angle=args.max_angle)
    test = rotated_digits(args.data, "test", seed=args.seed + 1, subset=args.test_subset,
                          max_angle=args.max_angle)
    protocol = {
        "data": str(args.data), "train_images": len(train.labels), "test_images": len(test.labels),
        "epochs": epochs, "repeats": repeats, "batch_size": args.batch_size, "lr": args.lr,
        "optimiser": "Adam", "max_angle": args.max_angle, "seed": args.seed,
        "device": describe(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": _cpu_name(),
        "folding": "central differences (scheme='central'); digital in folding_digital_*",
    }
    _say(f"stn-bench: {len(train.labels)} training / {len(test.labels)} test images "
         f"{tuple(train.images.shape[2:])}, rotated U[−{args.max_angle:g}°, {args.max_angle:g}°]; "
         f"{epochs} epochs × {repeats} repeat(s), batch {args.batch_size}, Adam {args.lr:g}, "
         f"on {describe(device)} (data ready in {time.perf_counter() - started:.1f} s)")
    classes = int(max(int(train.labels.max()), int(test.labels.max())) + 1)
    train = [t.to(device) for t in train[:2]]
    test = [t.to(device) for t in test[:2]]

    results = []
    for name in models:
        runs = [
            train_classifier(name, train, test, classes, schedule, log=_say,
                             label=f"{name} run {repeat + 1}/{repeats}")
            for repeat, schedule in enumerate(schedules)
        ]
        results.append(summarise_runs(name, runs))
        if args.json is not None:
            _write_json(args.json, protocol, results)
    print(format_table(results), flush=True)
    _say(f"stn-bench: finished in {time.perf_counter() - started:.0f} s")
    return 0


def format_table(results: list[dict]) -> str:
    """Markdown table of :func:`core.classification.training.summarise_runs` rows (± sample std
    only when there are repeats)."""
    from .._tables import format_table as table

    header = ["model", "parameters (transformer)", "test accuracy %", "% det J ≤ 0",
              "train s / run"]
    rows = []
    for row in results:
        extra = f" (+{row['transformer_parameters']:,})" if row["transformer_parameters"] else ""
        rows.append([
            row["label"], f"{row['parameters']:,}{extra}",
            _mean_std_text(row["accuracy_mean"], row["accuracy_std"], 2),
            _mean_std_text(row["folding_mean"], row["folding_std"], 3),
            f"{row['train_seconds']:.0f}",
        ])
    return table(header, rows, align="lrrrr")


def _write_json(path: Path, protocol: dict, results: list[dict]) -> None:
    from ..core.atomic import write_json

    write_json(path, {"protocol": protocol, "results": results}, overwrite=True)


def _mean_std_text(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo) and core count, else what :mod:`platform` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    name = names[0] if names else (platform.processor() or platform.machine())
    return f"{name}, {os.cpu_count()} logical CPUs"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _say(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
