"""Timing and peak-memory helpers for ``napari-difftt bench`` and ``benchmarks/bench_flow.py``.

Every case runs in a fresh Python process (:func:`run_isolated`) so that one case's allocations
and caches never flatter or burden another. Inside that process (:func:`measure`) the first call
measures peak memory and the following calls are timed:

* CPU: the process's peak resident set size during the first call minus its resident set size
  just before it (Linux: the high-water mark ``VmHWM`` is reset through
  ``/proc/self/clear_refs`` first; elsewhere ``getrusage`` ``ru_maxrss`` is used, which can
  only under-count). :func:`run_isolated` fixes glibc's mmap threshold at 64 KiB so that every
  freed tensor returns to the system at once: this is the memory the computation itself needed
  on top of its input.
* CUDA: ``torch.cuda.max_memory_allocated`` during the first call minus the memory allocated
  before it.

Times are wall-clock seconds per call (the device is synchronised around each call); the median
is reported.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ._tables import format_table  # re-exported for the benchmark scripts

__all__ = [
    "CASES",
    "Measurement",
    "case_spec",
    "format_table",
    "measure",
    "parse_sizes",
    "random_velocity",
    "run_isolated",
    "worker_main",
]


@dataclass(frozen=True)
class Measurement:
    """Times (s) of the repeated calls and the peak memory (bytes) one call needed."""

    times: list[float]
    peak_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def parse_sizes(text: str) -> list[tuple[int, ...]]:
    """``"256x256,64x64x64"`` → ``[(256, 256), (64, 64, 64)]`` (array order, 2 or 3 axes of at
    least 2 voxels, each read by :func:`core.data.parse_size`)."""
    from .core.data import parse_size

    return [parse_size(item, minimum=2, what="--sizes") for item in text.split(",")]


def random_velocity(
    shape: Sequence[int],
    *,
    amplitude: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
):
    """A smooth random velocity ``(1, n, *shape)`` in voxels with max‖v‖ = ``amplitude``.

    Cubic-free recipe: uniform noise on a 5-point-per-axis lattice, linearly upsampled.
    ``amplitude`` defaults to 5 % of the smallest axis (6.4 voxels at 128³).
    """
    import torch
    import torch.nn.functional as F

    n = len(shape)
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, n, *[5] * n, generator=generator, dtype=torch.float64) * 2 - 1
    mode = "bilinear" if n == 2 else "trilinear"
    field = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)
    amplitude = 0.05 * min(shape) if amplitude is None else amplitude
    field = field * (amplitude / float(field.norm(dim=1).max()))
    return field.to(device=device, dtype=getattr(torch, dtype))


def measure(call: Callable[[], object], *, repeats: int, device: str) -> Measurement:
    """Peak memory of the first ``call()``, then the wall-clock times of ``repeats`` more."""
    import torch

    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        sync()
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        gc.collect()
        _reset_peak_rss()
        before = _rss_bytes()
        call()
        peak = _peak_rss_bytes() - before
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return Measurement(times, peak)


def exp_case(velocity, squarings: int, backward: bool) -> Callable[[], object]:
    """Our exp with a fixed number of squarings; with ``backward``, one backward pass too."""
    from .core.flow import exp

    return _with_backward(lambda v: exp(v, squarings), velocity, velocity.shape, backward)


def integrate_case(method: str, pieces: int = 4):
    """Our integrate of ``pieces`` velocities (the given one scaled by 1/T, 2/T, ...)."""

    def build(velocity, squarings: int, backward: bool) -> Callable[[], object]:
        import torch

        from .core.flow import integrate

        scales = torch.arange(1, pieces + 1, dtype=velocity.dtype, device=velocity.device) / pieces
        velocities = velocity.unsqueeze(1) * scales.view(1, -1, 1, *[1] * (velocity.ndim - 2))
        velocities = velocities.contiguous()

        def run(v):
            return integrate(v, method=method, squarings=squarings).displacement

        return _with_backward(run, velocities, velocity.shape, backward)

    return build


CASES: dict[str, Callable[..., Callable[[], object]]] = {
    "ours exp": exp_case,
    "ours integrate bch T=4": integrate_case("bch"),
    "ours integrate compose T=4": integrate_case("compose"),
}


def case_spec(
    case: str,
    shape: Sequence[int],
    *,
    squarings: int,
    backward: bool,
    device: str,
    threads: int,
    repeats: int,
) -> dict:
    """The JSON-able description of one case that :func:`worker_main` reads."""
    return {
        "case": case,
        "shape": list(shape),
        "squarings": squarings,
        "backward": backward,
        "device": device,
        "threads": threads,
        "repeats": repeats,
    }


def run_isolated(command: Sequence[str], spec: dict, *, timeout: float = 1800) -> Measurement:
    """Run one case in a fresh process: ``command + [json spec]`` ends in :func:`worker_main`."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    # glibc: a fixed mmap threshold (no dynamic raise) returns every freed block of 64 KiB or
    # more to the system at once, so the resident set size tracks the live tensors
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    result = subprocess.run(
        [*command, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"case {spec['case']!r} at {spec['shape']} failed:\n{result.stderr[-3000:]}"
        )
    return Measurement(**json.loads(result.stdout.strip().splitlines()[-1]))


def worker_main(cases: dict[str, Callable[..., Callable[[], object]]], spec_json: str) -> None:
    """Body of a worker process: build the case named in the spec, measure it, print JSON."""
    import torch

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    velocity = random_velocity(
        spec["shape"],
        seed=spec.get("seed", 0),
        device=spec["device"],
        dtype=spec.get("dtype", "float32"),
    )
    call = cases[spec["case"]](velocity, spec["squarings"], spec["backward"])
    print(json.dumps(asdict(measure(call, repeats=spec["repeats"], device=spec["device"]))))


def format_bytes(count: float) -> str:
    """Bytes as MiB with one decimal (negative or NaN counts shown as they are)."""
    if isinstance(count, float) and math.isnan(count):
        return "?"
    return f"{count / 2**20:.1f} MiB"


def _with_backward(fn, velocity, out_shape, backward: bool) -> Callable[[], object]:
    """``fn(velocity)`` without autograd, or with one backward pass for a fixed output gradient."""
    import torch

    if not backward:

        def forward_only():
            with torch.no_grad():
                return fn(velocity)

        return forward_only
    leaf = velocity.detach().clone().requires_grad_()
    weight = torch.randn(
        out_shape, generator=torch.Generator().manual_seed(1), dtype=velocity.dtype
    ).to(velocity.device)

    def forward_backward():
        out = fn(leaf)
        (grad,) = torch.autograd.grad(out, leaf, grad_outputs=weight)
        return grad

    return forward_backward


def _rss_bytes() -> int:
    """Current resident set size in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> None:
    """Restart Linux's resident high-water mark (``VmHWM``) at the current size."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int:
    """Peak resident set size in bytes since :func:`_reset_peak_rss` (psutil has no peak on
    Linux or macOS): Linux ``VmHWM``, elsewhere ``getrusage``'s peak over the process's life."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    largest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return largest if sys.platform == "darwin" else largest * 1024


if __name__ == "__main__":  # python -m napari_difftt.benchmarking '<json spec>'
    worker_main(CASES, sys.argv[1])
