"""The race on screen while it runs: every strategy's status, estimate, time used and validation
score, with the time left in the budget, refreshed as things change.

The table is a rich Live display. The progress bars of toolkit.retrieval.embed are Live displays of their
own; rich (15.0 and later) nests them, so they render under the table while a strategy embeds and
print above it when done. With an older rich, which allows one Live display at a time, the table
is printed between strategies instead. Off when show_progress is False (and transient: the final
results table, toolkit.views.race.race_table, replaces it).
"""
from __future__ import annotations

import time
from typing import Sequence

from rich.live import Live
from rich.text import Text

from toolkit.machine.console import console
from toolkit.race.budget import Budget
from toolkit.views.fit import FittedTable, Row
from toolkit.views.leaderboard import run_columns
from toolkit.views.text import number

STATUS_STYLES = {"queued": "dim", "estimating": "cyan", "fitting": "bold cyan", "embedding": "bold cyan",
                 "finished": "green", "skipped": "yellow", "failed": "red", "timed-out": "red"}


def nested_live_supported() -> bool:
    """Whether this rich keeps a stack of Live displays (and so renders a progress bar inside one)."""
    return isinstance(getattr(console, "_live_stack", None), list)


class RaceView:
    """A context manager showing `runs` (StrategyRun objects, read as they change) under `budget`."""

    def __init__(self, runs: Sequence, budget: Budget, enabled: bool = True):
        self.runs, self.budget, self.enabled = runs, budget, enabled
        self.live: Live | None = None

    def __enter__(self) -> RaceView:
        if self.enabled and nested_live_supported():
            self.live = Live(get_renderable=self.table, console=console, refresh_per_second=2, transient=True)
            self.live.start(refresh=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def strategy_ended(self) -> None:
        """Between strategies: without a Live display (older rich), print the table now."""
        if self.enabled and self.live is None:
            console.print(self.table())

    def table(self) -> FittedTable:
        return race_view_table(self.runs, self.budget)


LIVE_COLUMNS = ("strategy", "status", "est s", "time s", "val score", "reason")


def race_view_table(runs: Sequence, budget: Budget) -> FittedTable:
    """Each run's status (whole words, in its colour), estimate, time used and validation score;
    a skipped or failed run's reason, under the table when it does not fit beside it."""
    rows = []
    for run in runs:
        rows.append(Row({"strategy": run.label, "status": Text(run.status, style=STATUS_STYLES.get(run.status, "")),
                         "est s": number(run.estimate, 0), "time s": _used(run),
                         "val score": number(run.validation.score if run.validation else None, 1),
                         "reason": run.reason or ""}))
    return FittedTable(run_columns(LIVE_COLUMNS), rows, title=f"race: {budget.describe()}", title_justify="left")


def _used(run) -> str:
    if run.started is None:
        return "-"
    ended = run.ended if run.ended is not None else time.monotonic()
    return f"{ended - run.started:.1f}"
