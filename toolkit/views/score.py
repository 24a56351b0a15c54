"""`invoke score`'s lines: a submission's competition score with its Top-k and mAP@10, and a word
about the queries it left out."""
from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table


def score_table(title: str, result: Any) -> Table:
    """One row: score, Top1, Top5, Top10, mAP@10 and the queries scored (a RetrievalScore)."""
    table = Table(title=escape(title))
    for column in ("score", "Top1", "Top5", "Top10", "mAP@10", "queries"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.score:.1f}", f"{result.top1:.4f}", f"{result.top5:.4f}", f"{result.top10:.4f}",
                  f"{result.map_at_10:.4f}", str(result.queries))
    return table


def missing_queries_line(missing: int) -> str | None:
    """A yellow line when the submission lacks some of the answers' queries, else None."""
    if missing <= 0:
        return None
    return f"[yellow]{missing} queries of the answers are missing from the submission (scored as misses)[/yellow]"


def test_score_lines(runs: Any, scores: dict[str, Any]) -> list[str]:
    """`invoke demo`'s last lines: each run's test score (a RetrievalScore by label) beside its
    validation score, the race's pick marked."""
    return [f"{escape(run.label)}: test score {scores[run.label].score:.1f} (validation {run.validation.score:.1f})"
            + (" [green]<- chosen[/green]" if run.chosen else "") for run in runs if run.label in scores]
