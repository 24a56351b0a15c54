"""A leaderboard row as a person reads it, the same everywhere: the leaderboard table, the race's
results table and the HTML report all take their cells from `run_cells`.

`run_cells` reads a run record (toolkit.records.store.Run, or the fields
toolkit.records.recorder.run_fields gives a race's run) and returns plain text per column; each
table picks its columns and escapes them for rich or HTML.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

from toolkit.race.selection import best_run
from toolkit.views.fit import fitted_table
from toolkit.views.text import budget_text, interval_text, local_time, number, post_processing_text, shorten

LEADERBOARD_COLUMNS = ("run", "race", "strategy", "status", "val score", "90% interval", "server", "plain",
                       "post-processing", "Top1",
                       "Top5", "Top10", "mAP@10", "fit s", "embed s", "sends", "submission / reason")
# left out first to last when the terminal is too narrow for every column
LEADERBOARD_OPTIONAL = ("sends", "mAP@10", "Top10", "Top5", "embed s", "fit s", "race", "plain", "Top1",
                        "post-processing", "90% interval")
LEFT = ("strategy", "status", "post-processing", "submission / reason")


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
            "fit s": number(run.fit_seconds, 1), "embed s": number(run.embed_seconds, 1)}


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
    """' (last send failed: ...)' when the run's last attempt failed and none scored, else ''."""
    last = summary.last_attempt
    if last is not None and last.state == "failed" and summary.best_scored is None and last.error:
        return f" (last send failed: {shorten(last.error, 120)})"
    return ""


def row_kind(run: Any, best: Any) -> str:
    """'best' for the best run (toolkit.race.selection), 'failed' for one that failed or ran out of
    time, else ''."""
    return "best" if run is best else "failed" if run.status in ("failed", "timed-out") else ""


def row_style(run: Any, best: Any) -> str | None:
    """The rich style of a row: the best in green, a failed one in red."""
    return {"best": "bold green", "failed": "red"}.get(row_kind(run, best))


def leaderboard_table(summaries: Sequence[Any], title: str, width: int | None = None) -> Table:
    """Runs (RunSummary) in the order given, validation score beside server score (does local
    validation predict it?); the best run (toolkit.race.selection) in green."""
    best = best_run(summary.run for summary in summaries)
    rows = []
    for summary in summaries:
        cells = run_cells(summary.run)
        cells.update({"server": server_text(summary), "sends": str(summary.attempts),
                      "submission / reason": run_detail(summary.run, 100) + send_failure_text(summary)})
        rows.append((cells, row_style(summary.run, best)))
    return runs_table(rows, LEADERBOARD_COLUMNS, LEADERBOARD_OPTIONAL, ("strategy",), width, title=escape(title))


def runs_table(rows: Sequence[tuple[dict[str, str], str | None]], columns: Sequence[str], optional: Sequence[str],
               no_wrap: Sequence[str], width: int | None = None, **table_options: Any) -> Table:
    """Rows of (cells, style) as a rich table of `columns`, fitted to the width (toolkit.views.fit):
    names and text left, numbers right, the last column folding."""
    def build(shown: Sequence[str]) -> Table:
        table = Table(**table_options)
        for column in shown:
            table.add_column(column, justify="left" if column in LEFT else "right", no_wrap=column in no_wrap,
                             overflow="fold" if column == "submission / reason" else "ellipsis")
        for cells, style in rows:
            table.add_row(*(escape(cells[column]) for column in shown), style=style)
        return table
    return fitted_table(build, columns, optional, width)


def race_title(race: Any) -> str:
    """'race 2, 2025-06-01 12:00, /data/comp, budget 20 min, commit 77edbe5a'."""
    parts = [f"race {race.id}", local_time(race.started_at), race.data_path, budget_text(race.budget_seconds),
             f"commit {race.git_commit[:8]}" if race.git_commit else None]
    return ", ".join(part for part in parts if part)
