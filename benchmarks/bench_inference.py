"""Whole-volume inference time: the bundled bch model against U-Nets of the same width.

    .venv/bin/python benchmarks/bench_inference.py [--sizes 64 128] [--repeats 5]
        [--legacy OLD.pt] [--threads 2] [--json out.json]

Each model runs :func:`napari_difftt.core.inference.predict_volume` on the same seeded phantom
(normalisation, padding, network, flow, prior, threshold), once to warm up, then ``--repeats``
times in turn (round robin, so a change of load hits every model alike), in three modes
(:data:`MODES`): the segmentation alone; as ``napari-difftt predict`` (plus
the topology report); as the Run model widget (plus the velocities upsampled for the Flow
explorer). Medians are printed with their ratio to the U-Net of the same width in the same mode,
all measured in this one run. The U-Nets have random weights (their cost does not depend on
them); the bch models are real checkpoints, because the number of squarings follows the size of
their velocities. ``--legacy`` adds a checkpoint written before velocity spaces existed
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

# what predict_volume computes besides the segmentation, per use
MODES = {
    "segmentation": {"topology": False, "velocities": False},
    "predict (+ topology report)": {"topology": True, "velocities": False},
    "Run model (+ flow velocities)": {"topology": True, "velocities": True},
}


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
        for mode, options in MODES.items():
            times = {name: [] for name in models}
            for model in models.values():
                predict_volume(model, image, **options)  # warm-up
            for _ in range(args.repeats):  # round robin: a change of load hits every model
                for name, model in models.items():
                    started = time.perf_counter()
                    predict_volume(model, image, **options)
                    times[name].append(time.perf_counter() - started)
            for name, model in models.items():
                medians[name, mode] = statistics.median(times[name])
                records.append({"model": name, "width": model.width, "size": size, "mode": mode,
                                **options, "seconds": times[name], "median": medians[name, mode]})
        print(f"\n{size}³ (s, median of {args.repeats}; × the U-Net of the same width; load "
              f"average {os.getloadavg()[0]:.2f})\n"
              f"| model | width | {' | '.join(MODES)} |\n|---|---|{'---|' * len(MODES)}")
        for name, model in models.items():
            unet = f"unet width {model.width}"
            cells = [f"{medians[name, mode]:.3f} s ({medians[name, mode] / medians[unet, mode]:.3f}"
                     " ×)" for mode in MODES]
            print(f"| {name} | {model.width} | {' | '.join(cells)} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(),
                                         "load_average": os.getloadavg(),
                                         "runs": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
