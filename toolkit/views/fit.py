"""Tables fitted to the terminal's width: the columns a person needs least are left out (and named
in the caption) until the table fits; a table still too wide lets its long names fold."""
from __future__ import annotations

from typing import Callable, Sequence

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from toolkit.machine.console import console

FOLD_WIDTH = 12       # the narrowest a column that wraps or folds is given, when its words are longer


def fitted_table(build: Callable[[Sequence[str]], Table], columns: Sequence[str], optional: Sequence[str],
                 width: int | None = None) -> Table:
    """build(shown columns) with as many of `columns` as fit `width` (default: the console's):
    the names in `optional` are left out first to last until it fits."""
    width = console.width if width is None else width
    shown, left_out = list(columns), []
    table = build(shown)
    for name in optional:
        if narrowest(table) <= width:
            break
        shown.remove(name)
        left_out.append(name)
        table = build(shown)
    if narrowest(table) > width:
        for column in table.columns:
            column.no_wrap, column.overflow = False, "fold"
    if left_out:
        note = f"left out to fit {width} columns: {', '.join(left_out)}"
        table.caption = f"{table.caption}\n{note}" if table.caption else note
    return table


def narrowest(table: Table) -> int:
    """The table's width with every column at its narrowest: a column that does not wrap as wide as
    its widest line, another as its longest word but at most FOLD_WIDTH; borders and padding too."""
    total = 1
    for column in table.columns:
        lines = [line for cell in (column.header, *column.cells) for line in _plain(cell).splitlines()] or [""]
        if column.no_wrap:
            needed = max(cell_len(line) for line in lines)
        else:
            needed = min(max((cell_len(word) for line in lines for word in line.split()), default=0), FOLD_WIDTH)
        total += needed + 3         # one space each side, one border
    return total


def _plain(cell: object) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else ""
