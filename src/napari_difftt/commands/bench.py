"""``napari-difftt bench``: time our exp and integrate on this machine (no peers).

Each case (method × size × pass) runs in a fresh process (see :mod:`napari_difftt.benchmarking`
for how time and peak memory are measured). The comparison with MONAI, voxelmorph and deepali
lives in ``benchmarks/bench_flow.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "time exp and integrate (bch, compose; T=4) on this machine and print a table"

DEFAULT_SIZES = "256x256,64x64x64,128x128x64"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        metavar="LIST",
        help=f"comma-separated array shapes (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="N",
        help="timed calls per case, after one untimed call (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="torch CPU threads (default: all logical CPUs)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)"
    )
    parser.add_argument(
        "--squarings",
        type=int,
        default=7,
        metavar="N",
        help="scaling-and-squaring steps (default 7)",
    )
    parser.add_argument(
        "--forward-only", action="store_true", help="skip the forward+backward pass"
    )


def run(args: argparse.Namespace) -> int:
    from ..benchmarking import (
        CASES,
        case_spec,
        format_bytes,
        format_table,
        parse_sizes,
        run_isolated,
    )
    from ..core.device import resolve_device
    from ..core.flow.checks import check_squarings

    sizes = parse_sizes(args.sizes)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    check_squarings(args.squarings)
    device = str(resolve_device(args.device))
    print(
        f"device {device}, {args.threads} threads, {args.squarings} squarings, float32, "
        f"median of {args.repeats} calls, each case in a fresh process",
        flush=True,
    )
    command = [sys.executable, "-m", "napari_difftt.benchmarking"]
    passes = (False,) if args.forward_only else (False, True)
    rows = []
    for size in sizes:
        for backward in passes:
            for case in CASES:
                spec = case_spec(
                    case, size, squarings=args.squarings, backward=backward, device=device,
                    threads=args.threads, repeats=args.repeats,
                )
                measured = run_isolated(command, spec)
                rows.append(
                    [
                        "x".join(map(str, size)),
                        "fwd+bwd" if backward else "fwd",
                        case.removeprefix("ours "),
                        f"{measured.median:.3f}",
                        format_bytes(measured.peak_bytes),
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print()
    print(format_table(["size", "pass", "method", "median (s)", "peak memory"], rows))
    return 0
