"""A tiny text progress bar for the command line (no tqdm dependency).

``ProgressBar`` is a ``progress(done, total, message)`` callable, the signature the core's long
operations accept, so one bar can follow a prediction or a training run directly.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Text progress bar written to ``stream`` (stderr by default).

    On a terminal the bar is redrawn in place (at most ``1 / min_interval`` times a second);
    elsewhere (log files, pipes, tests) one line is printed per ``log_every`` percent so logs
    stay short. Call :meth:`close` (or use it as a context manager) to end the line.
    """

    def __init__(
        self,
        label: str = "",
        *,
        stream: TextIO | None = None,
        width: int = 28,
        min_interval: float = 0.1,
        log_every: int = 10,
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.log_every = max(1, int(log_every))
        self._interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._last_percent = -1
        self._line = ""

    def __call__(self, done: int, total: int, message: str = "") -> None:
        """Report ``done`` of ``total`` units of work, with an optional short ``message``."""
        total = max(int(total), 1)
        done = min(max(int(done), 0), total)
        percent = 100 * done // total
        now = time.perf_counter()
        if self._interactive:
            if done < total and now - self._last_draw < self.min_interval:
                return
            self._draw(self._format(done, total, message, now), end="")
        else:
            step = percent // self.log_every
            if step == self._last_percent and done < total:
                return
            self._last_percent = step
            self._draw(self._format(done, total, message, now), end="\n")
        self._last_draw = now

    def close(self) -> None:
        """Finish the bar's line (interactive mode)."""
        if self._interactive and self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = ""

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _format(self, done: int, total: int, message: str, now: float) -> str:
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self._start
        eta = elapsed * (total - done) / done if done else float("nan")
        timing = f"{_clock(elapsed)}<{_clock(eta)}" if done < total else _clock(elapsed)
        label = f"{self.label}: " if self.label else ""
        tail = f" {message}" if message else ""
        return f"{label}[{bar}] {done}/{total} {100 * done // total:3d}% {timing}{tail}"

    def _draw(self, line: str, end: str) -> None:
        if end:
            self.stream.write(line + end)
        else:
            pad = max(len(self._line) - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._line = line if not end else ""


def _clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a number of seconds; ``?`` when unknown."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
