"""What reusing freed memory (core.allocator) buys: predictions and fine-tuning steps on the CPU.

    .venv/bin/python benchmarks/bench_malloc.py [--size 128] [--repeats 5] [--steps 30]
        [--threads 2] [--napari] [--json out.json]

Each case runs in a fresh interpreter (malloc's settings are process-wide and cannot be undone),
once with glibc's defaults and once after
:func:`~napari_difftt.core.allocator.reuse_freed_memory`:

* *predict*: the bundled 3D model's :func:`~napari_difftt.core.inference.predict_volume`
  (no topology report) on a ``--size``³ phantom, median of ``--repeats`` after two warm-ups,
  on the main thread and on a thread started after the policy (as napari's workers are);
* *fine-tune*: seconds per step of the "Segment from my slices" dock's fine-tune
  (:func:`~napari_difftt.fine_tune.fine_tune`, 64³ ellipsoid phantom, 3 painted slices) over
  ``--steps`` steps after the tenth;
* ``--napari`` (needs a display, e.g. ``xvfb-run -a``): the Run model widget in a napari viewer,
  the policy applied before napari is imported (as ``napari-difftt demo`` does), after the
  viewer exists (too late for the threads napari started), or not at all.

Printed: medians, the minor page faults of the timed part, and the ratio system / reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# each case's code: {apply} is where the policy is applied, {late} after napari's viewer exists
PREDICT = """
import json, resource, statistics, threading, time
{apply}
import torch
from napari_difftt.core.data import make_phantom
from napari_difftt.core.inference import default_checkpoint, load_model, predict_volume
torch.set_num_threads({threads})
model = load_model(default_checkpoint(), device="cpu").model
image = make_phantom(({size},) * 3, seed=999).image
def timed():
    for _ in range(2):
        predict_volume(model, image, topology=False)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = []
    for _ in range({repeats}):
        started = time.perf_counter()
        predict_volume(model, image, topology=False)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
main = timed()
seen = []
worker = threading.Thread(target=lambda: seen.append(timed()))
worker.start(); worker.join()
print(json.dumps({{"predict, main thread": main, "predict, a thread started later": seen[0]}}))
"""
FINE_TUNE = """
import json, resource, tempfile, time
{apply}
from pathlib import Path
import numpy as np, torch
from napari_difftt.core.data import make_phantom
from napari_difftt.core.io import Volume
from napari_difftt.core.slices import evenly_spaced_slices, paint
from napari_difftt.fine_tune import FINE_TUNE, fine_tune
torch.set_num_threads({threads})
FINE_TUNE["iterations"] = {steps} + 10
phantom = make_phantom((64,) * 3, seed=100, organ="ellipsoid")
painted = paint(phantom.labels, evenly_spaced_slices(phantom.labels, 3))
marks = {{}}
with tempfile.TemporaryDirectory() as folder:
    run = fine_tune(Volume(phantom.image, np.eye(4)), painted, 0, Path(folder) / "tuned.pt",
                    minutes=1e6, device="cpu")
    for event in run.events():
        if getattr(event, "step", None) in (10, {steps} + 10):
            marks[event.step] = (time.perf_counter(),
                                 resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
(t0, f0), (t1, f1) = marks[10], marks[{steps} + 10]
print(json.dumps({{"fine-tune step (64³)": [(t1 - t0) / {steps}, (f1 - f0) // {steps}]}}))
"""
NAPARI = """
import json, resource, statistics, time
{apply}
import napari, torch
from qtpy.QtWidgets import QApplication
from napari_difftt.core.data import make_phantom
torch.set_num_threads({threads})
viewer = napari.Viewer(show=False)
viewer.add_image(make_phantom(({size},) * 3, seed=999).image, name="image")
{late}
_, widget = viewer.window.add_plugin_dock_widget("napari-difftt", "Run model")
widget.set_device("cpu")
app = QApplication.instance()
seconds = []
for index in range({repeats} + 1):
    if index == 1:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    widget.run()
    while widget.job is not None:
        app.processEvents()
        time.sleep(0.002)
    seconds.append(time.perf_counter() - started)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
viewer.close()
print(json.dumps({{"Run model": [statistics.median(seconds[1:]), faults]}}))
"""
APPLY = ("from napari_difftt.core.allocator import reuse_freed_memory; "
         "assert reuse_freed_memory().startswith('reused')")


def run_case(code: str, apply: bool, late: bool = False, **values) -> dict:
    """One case in a fresh interpreter with glibc's malloc variables cleared → its JSON line."""
    source = code.format(apply=APPLY if apply and not late else "",
                         late=APPLY if late else "", **values)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.pop("NAPARI_DIFFTT_SYSTEM_MALLOC", None)
    done = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"a case failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--napari", action="store_true", help="also time the Run model widget")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    values = {"size": args.size, "repeats": args.repeats, "steps": args.steps,
              "threads": args.threads}
    cases = {"system": {}, "reused": {}}
    for name, apply in (("system", False), ("reused", True)):
        cases[name].update(run_case(PREDICT, apply, **values))
        cases[name].update(run_case(FINE_TUNE, apply, **values))
        if args.napari:
            cases[name].update(run_case(NAPARI, apply, **values))
    if args.napari:
        cases["reused after napari started"] = run_case(NAPARI, True, late=True, **values)
    print(f"{args.size}³ predictions (median of {args.repeats}), fine-tune steps at 64³ "
          f"(mean of {args.steps}); {args.threads} threads; seconds, minor page faults\n"
          "| case | glibc default | reused | default / reused |\n|---|---|---|---|")
    for what, (system, system_faults) in cases["system"].items():
        reused, faults = cases["reused"][what]
        print(f"| {what} | {system:.3f} s, {system_faults} | {reused:.3f} s, {faults} | "
              f"{system / reused:.2f} × |")
    if args.napari:
        late, faults = cases["reused after napari started"]["Run model"]
        system = cases["system"]["Run model"][0]
        print(f"| Run model, applied after napari started | | {late:.3f} s, {faults} | "
              f"{system / late:.2f} × |")
    if args.json is not None:
        args.json.write_text(json.dumps({**values, "cases": cases}, indent=2) + "\n")


if __name__ == "__main__":
    main()
