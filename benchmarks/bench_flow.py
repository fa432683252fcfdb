"""Scaling and squaring: our ``exp`` beside MONAI DVF2DDF, voxelmorph VecInt and deepali expv.

Run (see README.md)::

    bash benchmarks/setup_peers.sh && .bench-venv/bin/python benchmarks/bench_flow.py


1. Checks that every peer computes the same flow as ours on the same velocity (max difference
   in voxels, interior and overall).
2. Times each method (median of ``--repeats`` calls, forward and forward+backward) and measures
   its peak memory, each case in a fresh process, all with the same squarings, linear
   interpolation, dtype (float32) and thread count.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

from napari_difftt.benchmarking import (
    CASES,
    case_spec,
    format_bytes,
    format_table,
    parse_sizes,
    random_velocity,
    run_isolated,
    worker_main,
)

DEFAULT_SIZES = "256x256,64x64x64,128x128x64,128x128x128"
OURS = "ours exp"


# --- peers: each takes our velocity (B, n, *S) voxels in array order, returns the same -----------


def monai_flow(squarings: int):
    """MONAI DVF2DDF: voxel displacements, channels in array order, zeros padding (its default)."""
    from monai.networks.blocks import DVF2DDF

    module = DVF2DDF(num_steps=squarings)
    return module, lambda v: v, lambda u: u


def voxelmorph_flow(squarings: int):
    """voxelmorph IntegrateVelocityField (VecInt before 0.3): voxels, array order, zeros padding."""
    from voxelmorph.nn.modules import IntegrateVelocityField

    module = IntegrateVelocityField(steps=squarings)
    return module, lambda v: v, lambda u: u


def deepali_flow(squarings: int):
    """deepali expv: normalised units, channels (x, y, z), align_corners=True, border padding."""
    from deepali.core.flow import expv

    from napari_difftt.core.flow.grid import to_normalised, to_voxel

    def to_deepali(v):
        return to_normalised(v).movedim(-1, 1).contiguous()

    def from_deepali(u):
        return to_voxel(u.movedim(1, -1))

    return (lambda u: expv(u, steps=squarings, align_corners=True)), to_deepali, from_deepali


PEERS = {
    "MONAI DVF2DDF": monai_flow,
    "voxelmorph VecInt": voxelmorph_flow,
    "deepali expv": deepali_flow,
}


def peer_case(name: str):
    """A case builder for the worker: converts the input once, outside the timed call."""

    def build(velocity, squarings: int, backward: bool):
        import torch

        flow, convert_in, _ = PEERS[name](squarings)
        converted = convert_in(velocity)
        if not backward:

            def forward_only():
                with torch.no_grad():
                    return flow(converted)

            return forward_only
        leaf = converted.detach().clone().requires_grad_()
        weight = torch.randn(
            leaf.shape, generator=torch.Generator().manual_seed(1), dtype=leaf.dtype
        ).to(leaf.device)

        def forward_backward():
            (grad,) = torch.autograd.grad(flow(leaf), leaf, grad_outputs=weight)
            return grad

        return forward_backward

    return build


WORKER_CASES = {OURS: CASES[OURS], **{name: peer_case(name) for name in PEERS}}


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    load_before = _run(["uptime"]).strip()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    sizes = parse_sizes(args.sizes)
    peers = _available_peers()
    print(
        f"device {device}, {args.threads} threads, {args.squarings} squarings, float32, "
        f"median of {args.repeats}; peers: {', '.join(peers) or 'none installed'}"
    )

    check_rows = [row for size in sizes for row in _check(size, peers, args.squarings, device)]
    print("\n## Same flow? max ‖ours − peer‖ in voxels\n")
    print(format_table(["size", "peer", "interior", "overall", "max ‖u‖"], check_rows))
    print(
        "\nPeers that pad with zeros (MONAI, voxelmorph) differ near the border, where our border "
        "padding keeps a constant field constant; the interior must agree to float32 rounding."
    )

    time_rows = []
    for size in sizes:
        for backward in (False, True):
            time_rows += _time(size, backward, peers, args, device)
            print(format_table(_TIME_HEADER, time_rows[-len(peers) - 1 :]), flush=True)
    print("\n## Times\n")
    table = format_table(_TIME_HEADER, time_rows)
    print(table)
    if args.markdown:
        _write_markdown(Path(args.markdown), args, device, check_rows, table, argv, load_before)
    return 0


_TIME_HEADER = [
    "size",
    "pass",
    "method",
    "median (s)",
    "peak memory",
    "fastest peer / this (speed ratio)",
    "this / leanest peer (memory)",
]


def _check(size, peers, squarings, device):
    import torch

    from napari_difftt.core.flow import exp

    velocity = random_velocity(size, device=device)
    with torch.no_grad():
        ours = exp(velocity, squarings)
        largest = float(ours.norm(dim=1).max())
        margin = int(largest) + 2
        inside = (slice(None), slice(None), *[slice(margin, s - margin) for s in size])
        rows = []
        for name in peers:
            flow, convert_in, convert_out = PEERS[name](squarings)
            theirs = convert_out(flow(convert_in(velocity)))
            difference = (theirs - ours).norm(dim=1, keepdim=True)
            rows.append(
                [
                    "x".join(map(str, size)),
                    name,
                    f"{float(difference[inside].max()):.2e}",
                    f"{float(difference.max()):.2e}",
                    f"{largest:.2f}",
                ]
            )
    return rows


def _time(size, backward, peers, args, device):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    results = {}
    for name in [OURS, *peers]:
        spec = case_spec(
            name, size, squarings=args.squarings, backward=backward, device=device,
            threads=args.threads, repeats=args.repeats,
        )
        results[name] = run_isolated(command, spec)
    fastest = min((results[name].median for name in peers), default=float("nan"))
    leanest = min((results[name].peak_bytes for name in peers), default=float("nan"))
    rows = []
    for name, measured in results.items():
        rows.append(
            [
                "x".join(map(str, size)),
                "fwd+bwd" if backward else "fwd",
                name,
                f"{measured.median:.3f}",
                format_bytes(measured.peak_bytes),
                f"{fastest / measured.median:.2f}",
                f"{measured.peak_bytes / leanest:.2f}"
                if leanest == leanest and leanest > 0
                else "?",
            ]
        )
    return rows


def _available_peers() -> list[str]:
    found = []
    for name, module in (
        ("MONAI DVF2DDF", "monai"),
        ("voxelmorph VecInt", "voxelmorph"),
        ("deepali expv", "deepali"),
    ):
        try:
            __import__(module)
        except ImportError:
            print(f"{name}: {module} is not installed (run benchmarks/setup_peers.sh); skipped")
        else:
            found.append(name)
    return found


def _write_markdown(path: Path, args, device, check_rows, table, argv, load_before) -> None:
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor() or "?",
    )
    if device.startswith("cuda"):
        model += f"; GPU {torch.cuda.get_device_name(device)}"
    command = "python benchmarks/bench_flow.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = "\n".join(
        [
            "# Flow benchmark results",
            "",
            f"- command: `{command.strip()}`",
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {model}; {os.cpu_count()} logical CPUs; device {device}; "
            f"{args.threads} torch threads; torch {torch.__version__}",
            f"- load before/after (uptime): {load_before} / {_run(['uptime']).strip()}",
            f"- {args.squarings} squarings, float32, linear interpolation; "
            f"median of {args.repeats} calls; peak memory = peak RSS growth during one call "
            "in a fresh process (CUDA: peak allocated)",
            "",
            "## Same flow (max ‖ours − peer‖, voxels)",
            "",
            format_table(["size", "peer", "interior", "overall", "max ‖u‖"], check_rows),
            "",
            "## Times and memory",
            "",
            table,
            "",
        ]
    )
    path.write_text(text)
    print(f"\nwrote {path}")


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"comma-separated (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch CPU threads (default: all logical CPUs)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda[:N] (default: cuda when present)"
    )
    parser.add_argument(
        "--squarings", type=int, default=7, help="scaling-and-squaring steps (default 7)"
    )
    parser.add_argument(
        "--markdown", default=None, help="also write the tables to this Markdown file"
    )
    return parser


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(WORKER_CASES, sys.argv[2])
    else:
        sys.exit(main())
