"""Tables fitted to the width they are printed at, by one rule for every table a person reads.

Each column declares a priority and a kind. Columns of priority 0 are always shown; the others
join in order of priority (1 first) while the table still fits, and the first that does not fit
is left out with every one after it (named under the table). The kind says how a column's cells
meet the width:

- "value": one line, as wide as its widest cell (numbers, statuses, short words);
- "label": a name (a run's strategy), given its full length up to LABEL_WANT_WIDTH before any
  column of a lower priority is, and at least LABEL_MIN_WIDTH; a name longer than its column is
  abbreviated so that the names stay distinct (toolkit.views.text.abbreviations), the full name
  under the table beside the row's key;
- "text": wraps in the width left over (at least its min_width, else TEXT_MIN_WIDTH);
- "below": one line in the table when its longest cell fits there, else under the table beside
  the row's key (a failed run's reason, a run's notes).

A FittedTable is laid out when it is printed, at the width rich offers (the terminal's, a
notebook cell's, a file's: toolkit.machine.console), so the same table reads well anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence, Union

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from toolkit.views.text import abbreviations

LABEL_MIN_WIDTH = 20      # a label column is never cut narrower, while the priority-0 columns fit
LABEL_WANT_WIDTH = 60     # ... and is given this much (or its full length) before a column of lower priority
TEXT_MIN_WIDTH = 30       # a wrapping column, at the least (narrower, a sentence reads badly)
NOTE_KEY_WIDTH = 12       # keys under the table this short (run ids) keep a column of their own
KINDS = ("value", "label", "text", "below")

Cell = Union[str, Text]   # a str is plain text (no markup); a Text keeps its style


@dataclass(frozen=True)
class Column:
    name: str
    priority: int = 0             # 0: always shown; of the others the highest number is left out first
    kind: str = "value"           # one of KINDS (see the module docstring)
    justify: str = "right"
    min_width: int = 0            # at least this wide (a status column sized for its longest status)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")


@dataclass
class Row:
    cells: dict[str, Cell]        # by column name; a column without a cell shows nothing
    style: str | None = None
    key: str | None = None        # how the lines under the table name the row (run 12); None: by its label in full
    end_section: bool = False     # a line under the row


@dataclass
class Layout:
    """What a width allows: the columns shown and their widths, the labels as shown, the columns
    whose cells go under the table, those left out."""
    width: int
    shown: list[Column]
    widths: dict[str, int]
    labels: dict[str, dict[str, str]]        # a label column's name -> full label -> as shown
    below: list[Column]
    left_out: list[Column] = field(default_factory=list)
    width_for_all: int = 0                   # the width at which no column would be left out


def plain(cell: Cell | None) -> str:
    return cell.plain if isinstance(cell, Text) else (cell or "")


def cell_width(cell: Cell | None) -> int:
    return max((cell_len(line) for line in plain(cell).splitlines()), default=0)


def lay_out(columns: Sequence[Column], rows: Sequence[Row], width: int) -> Layout:
    """The one rule (the module docstring) applied to `columns` holding `rows` at `width`."""
    def header(column: Column) -> int:                # a value's header on one line; others may wrap
        words = [column.name] if column.kind == "value" else column.name.split()
        return max(cell_len(word) for word in words)

    natural = {column.name: max([column.min_width, header(column)]
                                + [cell_width(row.cells.get(column.name)) for row in rows]) for column in columns}

    def least(column: Column) -> int:
        if column.kind == "label":
            return min(natural[column.name], max(LABEL_MIN_WIDTH, column.min_width))
        if column.kind == "text":
            return min(natural[column.name], column.min_width or TEXT_MIN_WIDTH)
        return natural[column.name]

    def wanted(column: Column) -> int:
        return min(natural[column.name], LABEL_WANT_WIDTH) if column.kind == "label" else least(column)

    def cost(shown: Sequence[Column], size=least) -> int:
        return sum(size(column) for column in shown) + 3 * len(shown) + 1     # padding either side, borders

    in_table = [column for column in columns if column.kind != "below"]
    shown = [column for column in in_table if column.priority == 0]
    left_out: list[Column] = []
    for column in sorted((column for column in in_table if column.priority > 0), key=lambda column: column.priority):
        if not left_out and cost([*shown, column], wanted) <= width:
            shown.append(column)
        else:
            left_out.append(column)
    below = []
    for column in (column for column in columns if column.kind == "below"):
        if not any(plain(row.cells.get(column.name)).strip() for row in rows):
            continue                                   # nothing to say: no column, no lines
        if cost([*shown, column], wanted) <= width:
            shown.append(column)
        else:
            below.append(column)
    shown.sort(key=list(columns).index)

    widths = {column.name: least(column) for column in shown}
    spare = width - cost(shown)
    if spare < 0:                                      # too narrow even so: labels give way, then rich folds
        for column in (column for column in shown if column.kind in ("label", "text")):
            give = min(-spare, widths[column.name] - 6)
            widths[column.name] -= max(give, 0)
            spare += max(give, 0)
    spare = max(spare, 0)
    labels = [column for column in shown if column.kind == "label"]
    for column in labels:
        grow = min(spare, natural[column.name] - widths[column.name])
        widths[column.name] += grow
        spare -= grow
    texts = [column for column in shown if column.kind == "text"]
    wanting = {column.name: natural[column.name] - widths[column.name] for column in texts}
    total = sum(wanting.values())
    for column in texts:                               # the rest to wrapping columns, as much as each lacks
        grow = min(wanting[column.name], spare * wanting[column.name] // total) if total else 0
        widths[column.name] += grow
    shown_labels = {column.name: abbreviations((plain(row.cells.get(column.name)) for row in rows), widths[column.name])
                    for column in labels}
    return Layout(width, shown, widths, shown_labels, below, left_out, cost(in_table, wanted))


class FittedTable:
    """A table of `columns` and `rows` laid out (lay_out) at the width it is printed at: the rich
    Table, then under it the lines for abbreviated labels and "below" cells, then the columns left out."""

    def __init__(self, columns: Sequence[Column], rows: Sequence[Row], title: str | None = None,
                 caption: str | None = None, **table_options: Any):
        self.columns, self.rows = list(columns), list(rows)
        self.title, self.caption, self.table_options = title, caption, table_options

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def layout(self, width: int) -> Layout:
        return lay_out(self.columns, self.rows, width)

    def table(self, layout: Layout) -> Table:
        table = Table(title=self.title, caption=self.caption, **self.table_options)
        for column in layout.shown:
            table.add_column(column.name, justify=column.justify, width=layout.widths[column.name], overflow="fold")
        for row in self.rows:
            table.add_row(*(self._cell(layout, column, row.cells.get(column.name)) for column in layout.shown),
                          style=row.style, end_section=row.end_section)
        return table

    def notes(self, layout: Layout) -> Table | None:
        """Under the table, a line for each row with something to add: its key, its label in full
        when it was cut, its "below" cells. A row without a key is named by its label in full."""
        notes = []
        for row in self.rows:
            labels = [(plain(row.cells.get(name)), shown) for name, shown in layout.labels.items()]
            cut = [full for full, shown in labels if shown.get(full, full) != full]
            said = [text for text in (plain(row.cells.get(column.name)).strip() for column in layout.below)
                    if text and text != "-"]
            if not cut and not said:
                continue
            if row.key is not None:
                notes.append((row.key, ": ".join(cut + said), row.style))
            else:
                notes.append((labels[0][0] if labels else "", ": ".join(said), row.style))
        if not notes:
            return None
        hanging = max(cell_len(key) for key, _, _ in notes) <= NOTE_KEY_WIDTH
        grid = Table.grid(padding=(0, 1))
        if hanging:                                    # short keys (run ids): the text wraps beside them
            grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for key, text, style in notes:
            cells = (Text(key), Text(text)) if hanging else (Text(f"{key}: {text}" if text else key),)
            grid.add_row(*cells, style=style)
        return grid

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Any]:
        layout = self.layout(options.max_width)
        yield self.table(layout)
        notes = self.notes(layout)
        if notes is not None:
            yield notes
        if layout.left_out:
            yield Text(f"left out at {layout.width} columns: {', '.join(column.name for column in layout.left_out)} "
                       f"(all shown at {layout.width_for_all})", style="dim")

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(options.max_width, LABEL_MIN_WIDTH), options.max_width)

    @staticmethod
    def _cell(layout: Layout, column: Column, cell: Cell | None) -> Text | str:
        if isinstance(cell, Text):
            return cell
        text = cell or ""
        if column.name in layout.labels:
            text = layout.labels[column.name].get(text, text)
        return escape(text)
