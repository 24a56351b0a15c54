"""`invoke strategies`'s table: each registered strategy, what it does, and whether its weights
are on disk (so it can race offline)."""
from __future__ import annotations

from dataclasses import dataclass

from rich.markup import escape
from rich.table import Table


@dataclass(frozen=True)
class StrategyLine:
    name: str
    summary: str
    available_offline: bool
    detail: str


def strategies_table(lines: list[StrategyLine]) -> Table:
    table = Table(title="strategies")
    for column in ("name", "what it does", "weights offline", "detail"):
        table.add_column(column)
    for line in lines:
        table.add_row(escape(line.name), escape(line.summary),
                      "[green]yes[/green]" if line.available_offline else "[red]no[/red]", escape(line.detail))
    return table
