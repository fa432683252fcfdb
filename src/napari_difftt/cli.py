"""Command-line interface: ``napari-difftt <command> ...`` for work without a GUI.

Each command lives in ``napari_difftt.commands.<name>`` and provides ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import torch and other
heavy libraries inside ``run`` so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence

from . import __version__
from .errors import DiskFull

DEBUG_VARIABLE = "NAPARI_DIFFTT_DEBUG"  # set to 1: as --debug
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, DiskFull)  # the user can fix
COMMANDS: dict[str, str] = {
    "train": "napari_difftt.commands.train",
    "predict": "napari_difftt.commands.predict",
    "evaluate": "napari_difftt.commands.evaluate",
    "calibrate": "napari_difftt.commands.calibrate",
    "stn-bench": "napari_difftt.commands.stn_bench",
    "bench": "napari_difftt.commands.bench",
    "demo": "napari_difftt.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(
        prog="napari-difftt",
        description="Diffeomorphic Template Transformers: train, predict, evaluate, calibrate, "
        "bench, demo.",
    )
    parser.add_argument("--version", action="version", version=f"napari-difftt {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the full traceback of an error (or set {DEBUG_VARIABLE}=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status. Errors print one clear line (status 2); with
    ``--debug`` (or ``NAPARI_DIFFTT_DEBUG=1``) their traceback first. An error the user cannot
    fix (a TypeError, a RuntimeError) says how to see its traceback.

    Warnings print as one line, ``warning: MESSAGE``. A file-size limit (``ulimit -f``) makes
    writes fail with :class:`~napari_difftt.errors.DiskFull` instead of killing the process
    (SIGXFSZ is ignored), so a run can still save its work elsewhere.
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("napari-difftt: interrupted", file=sys.stderr)
        return 130
    except (*USER_ERRORS, TypeError, RuntimeError) as error:
        if debug:
            traceback.print_exc()
        print(f"napari-difftt {args.command}: error: {error}", file=sys.stderr)
        if not debug and not isinstance(error, USER_ERRORS):
            print(f"napari-difftt: an unexpected error; `napari-difftt --debug {args.command} "
                  f"...` (or {DEBUG_VARIABLE}=1) shows its traceback", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown


def run() -> None:
    """The ``napari-difftt`` script and ``python -m napari_difftt.cli``: freed CPU memory is
    reused for the whole process (:func:`~napari_difftt.core.allocator.reuse_freed_memory`,
    before any tensor or thread exists; a third of a 128³ prediction's time on 2 cores), then
    :func:`main` runs the command and its status is the process's exit status."""
    from .core.allocator import reuse_freed_memory

    reuse_freed_memory()
    sys.exit(main())


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as users of the CLI see it: its text alone, no source line."""
    return f"warning: {message}\n"


if __name__ == "__main__":
    run()
