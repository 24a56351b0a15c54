"""The race's results table, shown when a race is done (or interrupted): every run best first,
its cells the same as the leaderboard's (toolkit.views.leaderboard.run_cells)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rich.markup import escape
from rich.table import Table

from toolkit.records.recorder import run_fields
from toolkit.views.leaderboard import row_style, run_cells, run_detail, runs_table
from toolkit.views.text import number

RACE_COLUMNS = ("strategy", "status", "score", "90% interval", "plain", "Top1", "Top5", "Top10", "mAP@10",
                "post-processing", "est s", "fit s", "embed s", "submission / reason")
RACE_OPTIONAL = ("mAP@10", "Top10", "Top5", "est s", "embed s", "fit s", "plain", "Top1", "post-processing",
                 "90% interval")


def race_table(result: Any, width: int | None = None) -> Table:
    """The results of a race (toolkit.race.runner.RaceResult), best first, the best in green."""
    best = result.best
    rows = []
    for run in sorted(result.runs, key=lambda run: -(run.validation.score if run.validation else -1)):
        record = SimpleNamespace(**run_fields(run))
        cells = run_cells(record)
        detail = run_detail(record)            # the file's name: its folder is --submissions
        if run.notes:
            detail += f" ({'; '.join(run.notes)})"
        cells.update({"score": cells["val score"], "est s": number(run.estimate, 1), "submission / reason": detail})
        rows.append((cells, row_style(run, best)))
    return runs_table(rows, RACE_COLUMNS, RACE_OPTIONAL, ("strategy", "status"), width, caption=_caption(result),
                      title="race: local validation (identities held out of training/)")


def _caption(result: Any) -> str:
    budget = f"budget {result.budget_seconds:g} s, " if result.budget_seconds is not None else ""
    caption = f"{budget}{result.seconds:.1f} s used" + (", interrupted" if result.interrupted else "")
    if result.best_submission:
        caption += f"; best copied to {result.best_submission}"
    return escape(caption)


def race_summary(result: Any, leaderboard: Any) -> str:
    """The lines after the table: where the race is recorded, and the run it chose."""
    lines = []
    if result.race_id is not None:
        lines.append(f"recorded as race {result.race_id} in {escape(str(leaderboard))} "
                     "(invoke leaderboard; invoke submit --best)")
    best = result.best
    lines.append(f"best by validation: [bold green]{escape(best.label)}[/bold green] ({best.validation.score:.1f}) "
                 f"-> {escape(str(best.submission))}, copied to {escape(str(result.best_submission))}")
    return "\n".join(lines)
