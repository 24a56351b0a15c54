"""`invoke strategies`'s table: each registered strategy, what it does, and whether its weights
are on disk (so it can race offline); fitted to the width (toolkit.views.fit)."""
from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

from toolkit.views.fit import Column, FittedTable, Row
from toolkit.views.text import compact_paths

STRATEGY_COLUMNS = (Column("name", kind="label", justify="left"), Column("what it does", kind="text", justify="left"),
                    Column("weights offline", justify="left"), Column("detail", 1, kind="text", justify="left"))


@dataclass(frozen=True)
class StrategyLine:
    name: str
    summary: str
    available_offline: bool
    detail: str


def strategies_table(lines: list[StrategyLine]) -> FittedTable:
    rows = [Row({"name": line.name, "what it does": line.summary, "detail": compact_paths(line.detail),
                 "weights offline": Text("yes", style="green") if line.available_offline else Text("no", style="red")})
            for line in lines]
    return FittedTable(STRATEGY_COLUMNS, rows, title="strategies")
