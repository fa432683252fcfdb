"""The CLI's progress bar (tqdm behind the core's progress(done, total, message) signature)."""

from __future__ import annotations

import io

from napari_difftt.commands._progress import ProgressBar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_the_final_state_with_the_label_and_message():
    stream = io.StringIO()
    with ProgressBar("work", file=stream) as bar:
        for done in range(101):
            bar(done, 100, "msg")
    text = stream.getvalue()
    assert text.startswith("\rwork: ") or text.startswith("work: ")
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert "work: 100%" in last and "100/100" in last and last.endswith("msg]")
    assert text.endswith("\n")  # closing ends the line


def test_a_terminal_is_redrawn_in_place():
    stream = _Tty()
    with ProgressBar(file=stream) as bar:
        bar(1, 4)
        bar(4, 4)
    text = stream.getvalue()
    assert text.count("\r") >= 1 and "4/4" in text and text.endswith("\n")


def test_nothing_is_drawn_before_the_first_report():
    stream = io.StringIO()
    with ProgressBar("idle", file=stream):
        pass
    assert stream.getvalue() == ""


def test_out_of_range_counts_are_clamped():
    stream = io.StringIO()
    with ProgressBar(file=stream) as bar:
        bar(7, 0)  # total 0 → treated as 1, done clamped to it
        assert (bar.bar.n, bar.bar.total) == (1, 1)
        bar(-3, 5)
        assert (bar.bar.n, bar.bar.total) == (0, 5)
    assert "0/5" in stream.getvalue()
