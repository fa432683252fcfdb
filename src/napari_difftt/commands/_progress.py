"""The command line's progress bar: tqdm, as the core's ``progress(done, total, message)``.

The core's long operations (prediction, training, evaluation) report through a
``progress(done, total, message)`` callable; :class:`ProgressBar` is tqdm behind that signature,
on stderr.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["ProgressBar"]

TERMINAL_INTERVAL = 0.1  # s between redraws on a terminal
LOG_INTERVAL = 2.0  # s between updates in a log file or pipe (keeps logs short)


class ProgressBar:
    """A tqdm bar labelled ``label`` on ``file`` (stderr), drawn from the first report on; call it
    as ``bar(done, total, message)`` and :meth:`close` it (or use it as a context manager)."""

    def __init__(self, label: str = "", *, file: TextIO | None = None) -> None:
        self.label = label
        self.file = sys.stderr if file is None else file
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """``done`` of ``total`` units of work (clamped to 0 … total ≥ 1), with a short note."""
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        if self.bar is None:
            terminal = bool(getattr(self.file, "isatty", lambda: False)())
            self.bar = tqdm(
                desc=self.label or None, total=total, file=self.file, dynamic_ncols=terminal,
                mininterval=TERMINAL_INTERVAL if terminal else LOG_INTERVAL,
            )
        elif self.bar.total != total:
            self.bar.total = total
        if message:
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        """Draw the final state and end the line (nothing if nothing was reported)."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
