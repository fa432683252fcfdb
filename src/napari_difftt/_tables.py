"""The one table formatter of the command line, the benchmarks and the experiment scripts."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    align: str | None = None,
    style: str = "markdown",
    footer: int = 0,
) -> str:
    """A table of cells (formatted by the caller; ``str()`` is applied).

    ``style="markdown"``: ``| a | b |`` rows under a ``|---|---:|`` rule, ``align`` one letter
    per column, ``l`` or ``r`` (default: all ``l``, plain ``---``). ``style="text"``: columns
    padded to their widest cell and two spaces apart, a dashed rule under the header and
    another above the last ``footer`` rows (e.g. a summary).
    """
    cells = [[str(cell) for cell in row] for row in rows]
    columns = len(header)
    if any(len(row) != columns for row in cells):
        raise ValueError(f"every row needs {columns} cells like the header {list(header)}")
    if style == "markdown":
        align = "l" * columns if align is None else align
        if len(align) != columns or set(align) - {"l", "r"}:
            raise ValueError(f"align needs one of 'l'/'r' per column ({columns}), got {align!r}")
        rule = "|" + "|".join("---:" if side == "r" else "---" for side in align) + "|"
        return "\n".join(
            ["| " + " | ".join(header) + " |", rule]
            + ["| " + " | ".join(row) + " |" for row in cells]
        )
    if style != "text":
        raise ValueError(f"style must be 'markdown' or 'text', got {style!r}")
    every = [list(header), *cells]
    widths = [max(len(row[i]) for row in every) for i in range(columns)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in every]
    rule = "  ".join("-" * w for w in widths)
    lines.insert(1, rule)
    if footer:
        lines.insert(len(lines) - footer, rule)
    return "\n".join(lines)
