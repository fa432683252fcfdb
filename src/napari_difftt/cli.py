"""Command-line interface: ``napari-difftt <command> ...`` for work without a GUI.

Each command lives in ``napari_difftt.commands.<name>`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import torch and other
heavy libraries inside ``run`` so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings
from collections.abc import Sequence

from . import __version__

COMMANDS: dict[str, str] = {
    "train": "napari_difftt.commands.train",
    "predict": "napari_difftt.commands.predict",
    "evaluate": "napari_difftt.commands.evaluate",
    "stn-bench": "napari_difftt.commands.stn_bench",
    "bench": "napari_difftt.commands.bench",
    "demo": "napari_difftt.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(
        prog="napari-difftt",
        description="Diffeomorphic Template Transformers: train, predict, evaluate, bench, demo.",
    )
    parser.add_argument("--version", action="version", version=f"napari-difftt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (errors print one clear line, status 2).

    Warnings print as one line, ``warning: MESSAGE``. A file-size limit (``ulimit -f``) makes
    writes fail with :class:`~napari_difftt.errors.DiskFull` instead of killing the process
    (SIGXFSZ is ignored), so a run can still save its work elsewhere.
    """
    from .errors import DiskFull

    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("napari-difftt: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError,
            DiskFull) as error:
        print(f"napari-difftt {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as users of the CLI see it: its text alone, no source line."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
