"""Pool several runs of bench_inference.py: medians over all their repeats, ratio to the U-Net.

    .venv/bin/python benchmarks/pool_inference.py RUN1.json RUN2.json … [--size 128]

One run's ratio moves by ±0.05 from run to run on a 2-core machine (the U-Net's own median
alone by up to 10 %), more than a change of a few passes in the bch model's forward work. Each
model's seconds in a mode are pooled over the runs (every repeat of every file) and the median of
the pool is divided by the pooled median of the U-Net of the same width, in the same mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def pooled_seconds(paths: list[Path], size: int
                   ) -> tuple[dict[tuple[str, str], list[float]], dict[str, int]]:
    """({(model, mode): every repeat's seconds at ``size``³}, {model: network width}) over the
    runs in ``paths``."""
    pools: dict[tuple[str, str], list[float]] = {}
    widths: dict[str, int] = {}
    for path in paths:
        for record in json.loads(path.read_text())["runs"]:
            if "mode" in record and record["size"] == size:
                pools.setdefault((record["model"], record["mode"]), []).extend(record["seconds"])
                widths[record["model"]] = record["width"]
    return pools, widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="JSON files of bench_inference.py")
    parser.add_argument("--size", type=int, default=128, help="cube edge (default 128)")
    args = parser.parse_args()
    pools, widths = pooled_seconds(args.runs, args.size)
    if not pools:
        parser.error(f"no timings at {args.size}³ in {', '.join(map(str, args.runs))}")
    modes = list(dict.fromkeys(mode for _, mode in pools))
    models = list(dict.fromkeys(model for model, _ in pools))
    print(f"{args.size}³, {len(args.runs)} runs pooled (s, median of all repeats; × the U-Net of "
          f"the same width)\n| model | {' | '.join(modes)} |\n|---|{'---|' * len(modes)}")
    for model in models:
        cells = []
        for mode in modes:
            median = statistics.median(pools[model, mode])
            unet = pools.get((f"unet width {widths[model]}", mode))
            ratio = "" if unet is None else f" ({median / statistics.median(unet):.3f} ×)"
            cells.append(f"{median:.3f} s{ratio}, n {len(pools[model, mode])}")
        print(f"| {model} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
