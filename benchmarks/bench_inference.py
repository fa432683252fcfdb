"""Whole-volume inference time: the bundled bch model against U-Nets of the same width.

    .venv/bin/python benchmarks/bench_inference.py [--sizes 64 128] [--repeats 5]
        [--legacy OLD.pt] [--also CKPT ...] [--threads 2] [--system-malloc] [--json out.json]

Each model segments the same seeded phantom (normalisation, padding, network, flow, prior,
threshold), once to warm up, then ``--repeats`` times in turn (round robin, so a change of load
hits every model alike), in the modes of :data:`MODES`: the segmentation alone;
:func:`~napari_difftt.core.inference.predict_volume` as called by default (plus the topology
report; the velocities stay on the coarse grid); as ``napari-difftt predict``
(:func:`napari_difftt.pipeline.segment`); as the Run model widget (``segment`` with progress and
Cancel, under :class:`~napari_difftt.core.interrupt.Interruptible`). Freed memory is reused as
the command line does (:func:`~napari_difftt.core.allocator.reuse_freed_memory`) unless
``--system-malloc`` (what a napari started on its own, or a library call, gets). Medians are
printed with their ratio to the U-Net of the same width in the same mode, all measured in this
one run; then what the Flow explorer adds on demand (the coarse velocities upsampled to the image
grid). The U-Nets have random weights (their cost does not depend on them); the bch models are real
checkpoints, because the number of squarings follows the size of their velocities.
``--legacy`` adds a checkpoint written before velocity spaces existed (full-resolution
velocities), e.g. ``git show 39ee778:resources/difftt_phantom_bch.pt``; ``--also`` any other 3D
checkpoints, named by their file (e.g. a model of ``napari-difftt train``'s defaults, whose heads
read half resolution: docs/RESULTS.md, "The finer encoder levels folded into the
half-resolution heads").
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from napari_difftt.core.allocator import reuse_freed_memory
from napari_difftt.core.data import make_phantom
from napari_difftt.core.flow.certificate import upsampled_folding
from napari_difftt.core.inference import LoadedModel, default_checkpoint, load_model, predict_volume
from napari_difftt.core.metrics import folding_percent
from napari_difftt.core.models import TemplateTransformer
from napari_difftt.pipeline import segment


def _run_model(loaded: LoadedModel, image) -> None:
    segment(image, loaded, progress=lambda done, total, message: None, should_stop=lambda: False)


# one use each: a function of (loaded model, image)
MODES = {
    "segmentation": lambda loaded, image: predict_volume(loaded.model, image, topology=False),
    "predict_volume (default)": lambda loaded, image: predict_volume(loaded.model, image),
    "predict (pipeline.segment)": lambda loaded, image: segment(image, loaded),
    "Run model (segment + Cancel)": _run_model,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="cube edges")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--legacy", type=Path, help="a checkpoint of the old parameterisation")
    parser.add_argument("--also", type=Path, nargs="+", default=[],
                        help="other 3D checkpoints to time beside the bundled one")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave malloc's settings alone (the command line reuses freed memory)")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    args = parser.parse_args()
    malloc = "system default (--system-malloc)" if args.system_malloc else reuse_freed_memory()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    bundled = load_model(default_checkpoint(), device="cpu")
    models = {"bch (bundled)": bundled}
    if args.legacy is not None:
        models["bch (legacy, full resolution)"] = load_model(args.legacy, device="cpu")
    for path in args.also:
        loaded = load_model(path, device="cpu")
        if loaded.model.ndim != 3 or loaded.model.kind == "unet":
            parser.error(f"--also {path}: a 3D flow model is needed, got a {loaded.model.ndim}D "
                         f"{loaded.model.kind} model")
        models[f"{path.name} (feature level {loaded.model.feature_level})"] = loaded
    for width in sorted({loaded.model.width for loaded in models.values()}):
        unet = TemplateTransformer("unet", ndim=3, width=width).eval()
        models[f"unet width {width}"] = LoadedModel(unet, {}, cpu)
    space = bundled.model.velocity_space
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"width {bundled.model.width}, bundled velocity space {space}\nfreed memory: {malloc}")
    records = []
    for size in args.sizes:
        image = make_phantom((size,) * 3, seed=999).image
        medians = {}
        for mode, run in MODES.items():
            times = {name: [] for name in models}
            for loaded in models.values():
                run(loaded, image)  # warm-up
            for _ in range(args.repeats):  # round robin: a change of load hits every model
                for name, loaded in models.items():
                    started = time.perf_counter()
                    run(loaded, image)
                    times[name].append(time.perf_counter() - started)
            for name, loaded in models.items():
                medians[name, mode] = statistics.median(times[name])
                records.append({"model": name, "width": loaded.model.width, "size": size,
                                "mode": mode, "seconds": times[name],
                                "median": medians[name, mode]})
        print(f"\n{size}³ (s, median of {args.repeats}; × the U-Net of the same width; load "
              f"average {os.getloadavg()[0]:.2f})\n"
              f"| model | width | {' | '.join(MODES)} |\n|---|---|{'---|' * len(MODES)}")
        for name, loaded in models.items():
            unet = f"unet width {loaded.model.width}"
            cells = [f"{medians[name, mode]:.3f} s ({medians[name, mode] / medians[unet, mode]:.3f}"
                     " ×)" for mode in MODES]
            print(f"| {name} | {loaded.model.width} | {' | '.join(cells)} |")
        prediction = predict_volume(bundled.model, image)
        flow = prediction.flow
        upsampling = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            flow.on_image_grid()
            upsampling.append(time.perf_counter() - started)
        print(f"Flow explorer, on demand: the bundled model's {flow.pieces} + 1 velocities "
              f"upsampled to {size}³ in {statistics.median(upsampling):.3f} s (median)")
        folds = fold_test_times(prediction.displacement, args.repeats)
        certified = certified_fold_test_time(prediction, args.repeats)
        exhaustive = sum(sliced for sliced, _ in folds.values())
        print("Fold tests of the topology report (median s): both certified from the coarse "
              f"displacement (as predictions run them) {certified:.3f}, exhaustive "
              f"{exhaustive:.3f} ({exhaustive / certified:.1f} ×); exhaustive in cache-sized "
              "slabs / the volume in one piece: "
              + ", ".join(f"{scheme} {sliced:.3f} / {whole:.3f} ({whole / sliced:.2f} ×)"
                          for scheme, (sliced, whole) in folds.items()))
        records.append({"size": size, "fold_tests": folds, "fold_tests_certified": certified})
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "malloc": malloc,
                                         "load_average": os.getloadavg(),
                                         "runs": records}, indent=2) + "\n")


def certified_fold_test_time(prediction, repeats: int) -> float:
    """Median seconds of both fold tests of ``prediction`` as its topology report runs them:
    certified from its coarse displacement (:mod:`napari_difftt.core.flow.certificate`)."""
    displacement = torch.from_numpy(prediction.displacement)
    upsampling = prediction.flow.upsampling()
    return median_seconds(lambda: upsampled_folding(displacement, upsampling), repeats)


def fold_test_times(displacement, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of each fold test of ``displacement`` ``(3, *S)`` voxels, as shipped (in
    slabs of planes) and with the whole volume as one slab: {scheme: (sliced, whole)}."""
    jacobian = importlib.import_module("napari_difftt.core.flow.jacobian")
    shipped = jacobian._SLAB_VOXELS
    times = {}
    for scheme in ("central", "digital"):
        pair = []
        for slab in (shipped, math.prod(displacement.shape)):
            jacobian._SLAB_VOXELS = slab
            pair.append(median_seconds(functools.partial(folding_percent, displacement, scheme),
                                       repeats))
        jacobian._SLAB_VOXELS = shipped
        times[scheme] = tuple(pair)
    return times


def median_seconds(call, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``call()``, after one to warm up."""
    call()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
