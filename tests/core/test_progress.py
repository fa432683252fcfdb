"""The CLI's text progress bar: line-per-step logging off a terminal, in-place redraws on one."""

from __future__ import annotations

import io

from napari_difftt.core.progress import ProgressBar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_mode_prints_one_line_per_ten_percent_and_the_end():
    stream = io.StringIO()
    bar = ProgressBar("work", stream=stream)
    for done in range(101):
        bar(done, 100, "msg")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # 0 %, 10 %, ..., 100 %
    assert lines[-1].startswith("work: [" + "#" * 28 + "] 100/100 100%")
    assert lines[-1].endswith("msg")
    assert "50/100  50%" in lines[5]


def test_terminal_mode_redraws_in_place_and_close_ends_the_line():
    stream = _Tty()
    with ProgressBar(stream=stream, min_interval=0.0) as bar:
        bar(1, 4)
        bar(4, 4)
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "4/4 100%" in text


def test_out_of_range_counts_are_clamped():
    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    bar(7, 0)  # total 0 → treated as 1, done clamped to it
    assert "1/1 100%" in stream.getvalue()
