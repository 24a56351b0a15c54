"""Which run is the best: the one rule the race, the leaderboard, `submit --best`, `show` and the
report all follow.

A candidate is a finished run with a validation score and a submission file. Candidates rank by
validation score, highest first; among equal scores the one given first wins (runs are given in
the order the race ran and recorded them), so the race's <time>-best.json and `submit --best`
name the same run.

Runs are read as plain records, in either of the two shapes the toolkit has: a race's run
(toolkit.race.runner.StrategyRun: `validation.score`, `submission`) or a leaderboard row
(toolkit.records.store.Run: `validation_score`, `submission_path`); both have a `status`.
"""
from __future__ import annotations

from typing import Any, Iterable, TypeVar

R = TypeVar("R")


def validation_score(run: Any) -> float | None:
    """The run's validation score, or None when it has none."""
    if hasattr(run, "validation_score"):
        return run.validation_score
    validation = getattr(run, "validation", None)
    return None if validation is None else validation.score


def submission_file(run: Any) -> Any:
    """The run's submission file (a path or its text), or None when it wrote none."""
    if hasattr(run, "submission_path"):
        return run.submission_path
    return getattr(run, "submission", None)


def is_candidate(run: Any) -> bool:
    """Finished, scored on validation and with a submission: a run that may be called the best."""
    return run.status == "finished" and validation_score(run) is not None and bool(submission_file(run))


def ranked_runs(runs: Iterable[R]) -> list[R]:
    """The candidates, best first (equal scores keep the order they were given in)."""
    return sorted((run for run in runs if is_candidate(run)), key=lambda run: -validation_score(run))


def best_run(runs: Iterable[R]) -> R | None:
    """The best candidate, or None when no run is one."""
    ranked = ranked_runs(runs)
    return ranked[0] if ranked else None
