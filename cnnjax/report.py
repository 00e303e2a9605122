"""Reports: plain-text tables printed by the experiments (metrics files and plots come later)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], right=()) -> str:
    """Columns padded to their widest cell; columns whose index is in `right` align right."""
    lines = [tuple(header), *(tuple(str(c) for c in row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def cell(i, text):
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    return "\n".join("  ".join(cell(i, c) for i, c in enumerate(line)).rstrip() for line in lines)
