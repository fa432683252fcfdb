"""The progress convention of the core's long operations (torch-free, so anything may import it).

``progress(done, total, message)``: ``done`` of ``total`` units of work finished, with a short
note of what runs now; the command line draws it as a tqdm bar, the widgets as a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress"]

Progress = Callable[[int, int, str], None]
