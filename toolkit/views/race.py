"""The race's results table, shown when a race is done (or interrupted): every run best first,
its cells the same as the leaderboard's (toolkit.views.leaderboard.run_cells)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from rich.markup import escape

from toolkit.records.recorder import run_fields
from toolkit.views.fit import FittedTable, Row
from toolkit.views.leaderboard import row_style, run_cells, run_columns
from toolkit.views.text import number

RACE_COLUMNS = ("run", "strategy", "status", "val score", "90% interval", "plain", "Top1", "Top5", "Top10", "mAP@10",
                "post-processing", "time s", "est s", "fit s", "embed s", "submission", "reason", "notes")


def race_table(result: Any) -> FittedTable:
    """The results of a race (toolkit.race.runner.RaceResult), best first, the best in green; the
    run ids when the race was recorded. Fitted to the width it is printed at (toolkit.views.fit)."""
    best = result.best
    recorded = any(run.run_id is not None for run in result.runs)
    rows = []
    for run in sorted(result.runs, key=lambda run: -(run.validation.score if run.validation else -1)):
        record = SimpleNamespace(**run_fields(run), id=run.run_id)
        cells = run_cells(record)
        if run.started is None:                # never started (skipped): no time, not 0.0
            cells["time s"] = "-"
        cells.update({"est s": number(run.estimate, 1), "reason": run.reason or "", "notes": "; ".join(run.notes),
                      "submission": run.submission.name if run.submission else "-"})   # its folder: --submissions
        rows.append(Row(cells, row_style(run, best), key=f"run {run.run_id}" if recorded else None))
    columns = run_columns(name for name in RACE_COLUMNS if recorded or name != "run")
    return FittedTable(columns, rows, caption=_caption(result),
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
