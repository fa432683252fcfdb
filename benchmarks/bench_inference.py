"""Whole-volume inference time: the bundled bch model against U-Nets of the same width.

    .venv/bin/python benchmarks/bench_inference.py [--sizes 64 128] [--repeats 5]
        [--legacy OLD.pt] [--threads 2] [--json out.json]

Each model runs :func:`napari_difftt.core.inference.predict_volume` on the same seeded phantom
(normalisation, padding, network, flow, prior, threshold, velocities for display), once to warm
up, then ``--repeats`` times, without and with the topology report (``topology=False/True``);
medians are printed with their ratio to the U-Net of the same width, all measured in this one
run. The U-Nets have random weights (their cost does not depend on them); the bch
models are real checkpoints, because the number of squarings follows the size of their
velocities. ``--legacy`` adds a checkpoint written before velocity spaces existed
(full-resolution velocities), e.g. ``git show 39ee778:resources/difftt_phantom_bch.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from napari_difftt.core.data import make_phantom
from napari_difftt.core.inference import default_checkpoint, load_model, predict_volume
from napari_difftt.core.models import TemplateTransformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="cube edges")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--legacy", type=Path, help="a checkpoint of the old parameterisation")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundled = load_model(default_checkpoint(), device="cpu").model
    models = {"bch (bundled)": bundled}
    if args.legacy is not None:
        models["bch (legacy, full resolution)"] = load_model(args.legacy, device="cpu").model
    for width in sorted({model.width for model in models.values()}):
        models[f"unet width {width}"] = TemplateTransformer("unet", ndim=3, width=width).eval()
    space = bundled.velocity_space
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"width {bundled.width}, bundled velocity space {space}")
    records = []
    for size in args.sizes:
        image = make_phantom((size,) * 3, seed=999).image
        medians = {}
        for name, model in models.items():
            for topology in (False, True):
                predict_volume(model, image, topology=topology)  # warm-up
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    predict_volume(model, image, topology=topology)
                    times.append(time.perf_counter() - started)
                medians[name, topology] = statistics.median(times)
                records.append({"model": name, "width": model.width, "size": size,
                                "topology": topology, "seconds": times,
                                "median": medians[name, topology]})
        print(f"\n{size}³ (median of {args.repeats}, load average {os.getloadavg()[0]:.2f})\n"
              "| model | width | s | × U-Net | s with topology report | × U-Net |\n"
              "|---|---|---|---|---|---|")
        for name, model in models.items():
            unet = f"unet width {model.width}"
            plain, full = medians[name, False], medians[name, True]
            print(f"| {name} | {model.width} | {plain:.3f} | {plain / medians[unet, False]:.3f} "
                  f"| {full:.3f} | {full / medians[unet, True]:.3f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(),
                                         "load_average": os.getloadavg(),
                                         "runs": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
