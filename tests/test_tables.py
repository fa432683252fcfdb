"""The one table formatter: Markdown for reports, padded text for the terminal."""

from __future__ import annotations

import pytest

from napari_difftt._tables import format_table


def test_markdown_rows_under_an_aligned_rule():
    table = format_table(["a", "b"], [["1", 2.5]], align="lr")
    assert table.splitlines() == ["| a | b |", "|---|---:|", "| 1 | 2.5 |"]
    assert format_table(["a"], [["x"]]).splitlines()[1] == "|---|"


def test_text_columns_are_padded_with_a_rule_above_the_footer():
    table = format_table(["case", "dice"], [["long_name", "0.9"], ["mean", "0.85"]],
                         style="text", footer=1)
    assert table.splitlines() == [
        "case       dice",
        "---------  ----",
        "long_name  0.9 ",
        "---------  ----",
        "mean       0.85",
    ]


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        format_table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="align needs one of"):
        format_table(["a", "b"], [["1", "2"]], align="lx")
    with pytest.raises(ValueError, match="style must be"):
        format_table(["a"], [["1"]], style="html")
