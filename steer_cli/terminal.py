"""Tables on a terminal and in a pipe.

On a terminal, rich draws tables fitted to its width (long cells fold). Off a terminal (a pipe, a
file, CI logs) a table is printed as plain text, one row a line, never wrapped, columns aligned
with two spaces (as ``kubectl get`` does), so that ``steer presets | grep NAME`` finds the row.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def stdout_console() -> Any:
    return Console(highlight=False)


def _plain(cell: Any) -> str:
    if isinstance(cell, Text):
        text = cell.plain
    elif isinstance(cell, str):
        text = Text.from_markup(cell).plain
    else:
        text = str(cell)
    return text.replace("\r", "\\r").replace("\n", "\\n")


def plain_table(table: Any) -> str:
    """A rich Table as unwrapped text: the title, the header, then one line per row."""
    columns = table.columns
    grid = [[_plain(c.header) for c in columns]]
    cells = [[_plain(x) for x in c.cells] for c in columns]
    grid += [list(row) for row in zip(*cells)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    lines = []
    if table.title:
        lines.append(_plain(table.title))
    for row in grid:
        parts = [text.rjust(w) if c.justify == "right" else text.ljust(w)
                 for text, w, c in zip(row, widths, columns)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def print_table(console: Any, table: Any) -> None:
    """Print a rich Table: drawn on a terminal, plain one-row-a-line text otherwise."""
    if console.is_terminal:
        console.print(table)
    else:
        console.file.write(plain_table(table) + "\n")


def print_text(console: Any, text: Any) -> None:
    """A line of text (a note under a table): not wrapped off a terminal."""
    console.print(text, soft_wrap=not console.is_terminal)
