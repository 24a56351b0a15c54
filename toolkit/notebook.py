"""What a notebook shows of the leaderboard and of a race: its runs as rows, best first, with the
numbers as numbers (a pandas DataFrame when pandas is importable, else a list of dicts), and an
object that renders as a table in a cell (`_repr_html_`) and as text elsewhere.

    view = leaderboard_view(Leaderboard(path), race_id=None)   # the latest race; all_runs=True: every run
    view.rows            # DataFrame or list of dicts: run, race, strategy, status, validation, ...
    view.best_submission # the best run's submission file (a race: its <time>-best.json copy)

The Python API (retrieval_race.py, beside tasks.py) returns these.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.records.store import Leaderboard, RunSummary
from toolkit.views.text import post_processing_text

COLUMNS = ("run", "race", "strategy", "status", "validation", "validation_low", "validation_high", "server",
           "plain", "post_processing", "top1", "top5", "top10", "map_at_10", "fit_seconds", "embed_seconds",
           "submission", "reason")


def run_row(summary: RunSummary) -> dict[str, Any]:
    """One leaderboard row with its numbers as numbers (None where there is none)."""
    run = summary.run
    return {"run": run.id, "race": run.race_id, "strategy": run.name, "status": run.status,
            "validation": run.validation_score, "validation_low": run.validation_low,
            "validation_high": run.validation_high, "server": summary.server_score, "plain": run.plain_score,
            "post_processing": post_processing_text(run), "top1": run.validation_top1, "top5": run.validation_top5,
            "top10": run.validation_top10, "map_at_10": run.validation_map_at_10, "fit_seconds": run.fit_seconds,
            "embed_seconds": run.embed_seconds, "submission": run.submission_path, "reason": run.reason}


def as_table(rows: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame of the rows when pandas is importable, else the rows themselves."""
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=list(COLUMNS))


@dataclass
class LeaderboardView:
    """Runs best first (by validation score, then the server's), as a notebook shows them."""

    title: str
    rows: Any                                   # a DataFrame, or a list of dicts (see COLUMNS)
    best_submission: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rows as a list of dicts, whichever form `rows` has."""
        return self.rows.to_dict("records") if hasattr(self.rows, "to_dict") else list(self.rows)

    def _repr_html_(self) -> str:
        header = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(name)))}</td>" for name in COLUMNS) + "</tr>"
                       for row in self.records)
        lines = "".join(f"<p>{html.escape(line)}</p>" for line in self._footer())
        return (f"<p><b>{html.escape(self.title)}</b></p><table><thead><tr>{header}</tr></thead>"
                f"<tbody>{body}</tbody></table>{lines}")

    def __repr__(self) -> str:
        shown = ("run", "strategy", "status", "validation", "server", "fit_seconds", "embed_seconds")
        cells = [[name for name in shown]] + [[_cell(row.get(name)) for name in shown] for row in self.records]
        widths = [max(len(line[column]) for line in cells) for column in range(len(shown))]
        table = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in cells]
        return "\n".join([self.title, *table, *self._footer()])

    def _footer(self) -> list[str]:
        best = [f"best submission: {self.best_submission}"] if self.best_submission else []
        return best + self.notes


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def leaderboard_view(board: Leaderboard, race_id: int | None = None, all_runs: bool = False,
                     best_submission: Path | None = None, notes: list[str] | None = None) -> LeaderboardView:
    """The runs of one race (`race_id`; None: the latest) or of every race (`all_runs`). Raises
    ValueError for a race the leaderboard does not hold."""
    race = None if all_runs else (board.race(race_id) if race_id is not None else board.latest_race())
    if race_id is not None and race is None and not all_runs:
        raise ValueError(f"no race {race_id} in {board.path}; leaderboard(all=True) lists every run")
    summaries = board.summaries(race.id if race else None) if race or all_runs else []
    title = f"race {race.id} in {board.path}" if race else f"all runs in {board.path}"
    if best_submission is None and race is not None:
        chosen = [summary.run for summary in summaries if summary.run.chosen]
        best_submission = Path(chosen[0].submission_path) if chosen and chosen[0].submission_path else None
    return LeaderboardView(title, as_table([run_row(summary) for summary in summaries]), best_submission,
                           list(notes or []))
