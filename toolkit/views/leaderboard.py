"""A leaderboard row as a person reads it, the same everywhere: the leaderboard table, the race's
results table and the HTML report all take their cells from `run_cells`.

`run_cells` reads a run record (toolkit.records.store.Run, or the fields
toolkit.records.recorder.run_fields gives a race's run) and returns plain text per column; each
table picks its columns and escapes them for rich or HTML. The terminal's tables of runs (this
leaderboard, the race's, the live one) take their columns from RUN_COLUMNS, where each column's
priority is declared once, and are fitted to the width by toolkit.views.fit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape

from toolkit.race.runs import RUNNING
from toolkit.race.selection import best_run
from toolkit.records.store import RUN_STATUSES
from toolkit.views.fit import Column, FittedTable, Row
from toolkit.views.text import budget_text, interval_text, local_time, number, post_processing_text, shorten

STATUS_WIDTH = max(len(status) for status in ("queued", *RUNNING, *RUN_STATUSES))   # the column never jumps

#: Every column a table of runs can have, declared once (toolkit.views.fit has the rule): priority 0
#: is always shown, the others are left out from the highest number down when the width is short.
RUN_COLUMNS = {column.name: column for column in (
    Column("run"), Column("strategy", kind="label", justify="left"),
    Column("status", justify="left", min_width=STATUS_WIDTH), Column("val score"), Column("server"), Column("time s"),
    Column("90% interval", 1), Column("post-processing", 2, justify="left"), Column("Top1", 3), Column("plain", 4),
    Column("race", 5), Column("est s", 6), Column("fit s", 7), Column("embed s", 8), Column("Top5", 9),
    Column("Top10", 10), Column("mAP@10", 11), Column("sends", 12), Column("submission", 13, justify="left"),
    Column("reason", kind="below", justify="left"), Column("notes", kind="below", justify="left"))}

LEADERBOARD_COLUMNS = ("run", "race", "strategy", "status", "val score", "90% interval", "server", "plain",
                       "post-processing", "Top1", "Top5", "Top10", "mAP@10", "time s", "fit s", "embed s", "sends",
                       "submission", "reason")


def run_columns(names) -> list[Column]:
    """The columns of RUN_COLUMNS named, in the order named."""
    return [RUN_COLUMNS[name] for name in names]


def run_cells(run: Any) -> dict[str, str]:
    """Plain text of a run record's columns: its id and race, name, status, validation scores,
    post-processing and timings."""
    return {"run": "-" if getattr(run, "id", None) is None else str(run.id),
            "race": "-" if getattr(run, "race_id", None) is None else str(run.race_id),
            "strategy": run.name, "status": run.status, "val score": number(run.validation_score, 1),
            "90% interval": interval_text(run.validation_low, run.validation_high),
            "plain": number(run.plain_score, 1), "post-processing": post_processing_text(run),
            "Top1": number(run.validation_top1, 3), "Top5": number(run.validation_top5, 3),
            "Top10": number(run.validation_top10, 3), "mAP@10": number(run.validation_map_at_10, 3),
            "fit s": number(run.fit_seconds, 1), "embed s": number(run.embed_seconds, 1),
            "time s": number(_total(run.fit_seconds, run.embed_seconds), 1)}


def _total(*seconds: float | None) -> float | None:
    known = [value for value in seconds if value is not None]
    return sum(known) if known else None


def run_detail(run: Any, reason_limit: int | None = None) -> str:
    """The submission file's name, or why there is none (cut to reason_limit characters)."""
    if run.submission_path:
        return Path(run.submission_path).name
    reason = run.reason or ""
    return reason if reason_limit is None else shorten(reason, reason_limit)


def server_text(summary: Any) -> str:
    """A RunSummary's server score, or what became of its last attempt ('sending?', 'failed', '-')."""
    if summary.server_score is not None:
        return f"{summary.server_score:.1f}"
    last = summary.last_attempt
    if last is None:
        return "-"
    return "sending?" if last.state == "sending" else "failed"


def send_failure_text(summary: Any) -> str:
    """'last send failed: ...' when the run's last attempt failed and none scored, else ''."""
    last = summary.last_attempt
    if last is not None and last.state == "failed" and summary.best_scored is None and last.error:
        return f"last send failed: {shorten(last.error, 120)}"
    return ""


def row_kind(run: Any, best: Any) -> str:
    """'best' for the best run (toolkit.race.selection), 'failed' for one that failed or ran out of
    time, else ''."""
    return "best" if run is best else "failed" if run.status in ("failed", "timed-out") else ""


def row_style(run: Any, best: Any) -> str | None:
    """The rich style of a row: the best in green, a failed one in red."""
    return {"best": "bold green", "failed": "red"}.get(row_kind(run, best))


def leaderboard_table(summaries: Sequence[Any], title: str) -> FittedTable:
    """Runs (RunSummary) in the order given, validation score beside server score (does local
    validation predict it?); the best run (toolkit.race.selection) in green. Fitted to the width it
    is printed at (toolkit.views.fit): a label cut to fit and a failed run's reason are written
    in full under the table, by run id."""
    best = best_run(summary.run for summary in summaries)
    rows = []
    for summary in summaries:
        cells = run_cells(summary.run)
        reason = "; ".join(part for part in (summary.run.reason, send_failure_text(summary)) if part)
        cells.update({"server": server_text(summary), "sends": str(summary.attempts),
                      "submission": Path(summary.run.submission_path).name if summary.run.submission_path else "-",
                      "reason": reason})
        rows.append(Row(cells, row_style(summary.run, best), key=f"run {cells['run']}"))
    return FittedTable(run_columns(LEADERBOARD_COLUMNS), rows, title=escape(title))


def race_title(race: Any) -> str:
    """'race 2, 2025-06-01 12:00, /data/comp, budget 20 min, commit 77edbe5a'."""
    parts = [f"race {race.id}", local_time(race.started_at), race.data_path, budget_text(race.budget_seconds),
             f"commit {race.git_commit[:8]}" if race.git_commit else None]
    return ", ".join(part for part in parts if part)
