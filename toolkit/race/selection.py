"""Which run is the best: the one rule the race, the leaderboard, `submit --best`, `show` and the
report all follow.

A candidate is a finished run with a validation score and a submission file. At the end of a
race, `choose_best` picks among them: the best validation score, unless other runs are tied with
it within the bootstrap interval of their paired difference; then the simplest of the tied (a
zero-shot strategy before a trained one, a single strategy before an ensemble), the higher
mAP@10 among equally simple ones. The race marks that run `chosen` and the leaderboard keeps it. `best_run` returns the marked run, or else the highest score (the
first of equals, runs being given in the order the race ran them).

Runs are read as plain records with `status`, `validation_score`, `submission_path` and `chosen`:
a race's run (toolkit.race.runs.StrategyRun) and a leaderboard row (toolkit.records.store.Run)
both have them.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence, TypeVar

from toolkit.retrieval.ensemble import ENSEMBLE
from toolkit.retrieval.uncertainty import score_interval, simplest_tied

R = TypeVar("R")


def is_candidate(run: Any) -> bool:
    """Finished, scored on validation and with a submission: a run that may be called the best."""
    return run.status == "finished" and run.validation_score is not None and bool(run.submission_path)


def ranked_runs(runs: Iterable[R]) -> list[R]:
    """The candidates, best first (equal scores keep the order they were given in)."""
    return sorted((run for run in runs if is_candidate(run)), key=lambda run: -run.validation_score)


def best_run(runs: Iterable[R]) -> R | None:
    """The run the race chose, else the best candidate; None when no run is one."""
    candidates = [run for run in runs if is_candidate(run)]
    chosen = [run for run in candidates if run.chosen]
    if chosen:
        return chosen[0]
    ranked = ranked_runs(candidates)
    return ranked[0] if ranked else None


def outclassed(run: Any, best: Any) -> str:
    """Why `run` cannot be chosen over `best` whatever its test gives: its validation interval lies
    wholly below best's; "" when it can."""
    if run is best or run.validation is None or best.validation is None:
        return ""
    low, high = score_interval(run.validation.per_query)
    best_low, best_high = score_interval(best.validation.per_query)
    if high >= best_low:
        return ""
    return (f"outclassed on validation: {run.validation.score:.1f} ({low:.1f}-{high:.1f}) against {best.label}'s "
            f"{best.validation.score:.1f} ({best_low:.1f}-{best_high:.1f}); test not embedded, its time left to others")


def complexity(run: Any) -> int:
    """0 for a zero-shot strategy, 1 for a trained one, 2 for an ensemble."""
    return 2 if run.strategy == ENSEMBLE else 1 if run.trains else 0


def choose_best(runs: Sequence[Any]) -> tuple[Any | None, str]:
    """The race's pick among its runs (each with its `validation` RetrievalScore on the same
    validation queries), and a note when a simpler run stood in for the best-scoring one."""
    candidates = [run for run in runs if is_candidate(run)]
    if not candidates:
        return None, ""
    preference = simplest_tied([run.validation.score for run in candidates],
                               [run.validation.per_query for run in candidates],
                               [complexity(run) for run in candidates],
                               [run.validation.map_at_10 for run in candidates])
    chosen, best = candidates[preference.chosen], candidates[preference.best]
    if not preference.simpler_chosen:
        return chosen, ""
    low, high = preference.interval
    reason = "simpler" if complexity(chosen) < complexity(best) else "higher mAP@10"
    return chosen, (f"chosen over {best.label} ({best.validation.score:.1f}): tied on validation "
                    f"(difference {low:+.1f} to {high:+.1f}), {reason}")


def ensemble_members(runs: Sequence[Any], size: int) -> list[Any]:
    """The finished strategies (not ensembles) with embeddings at hand, best by validation first."""
    return ranked_runs(run for run in runs if run.vectors is not None and run.strategy != ENSEMBLE)[:max(size, 0)]


def member_names(members: Sequence[Any]) -> list[str]:
    """Each member by its registry name (face-zs), or by its full label when two share a name."""
    names = [member.strategy for member in members]
    return [member.strategy if names.count(member.strategy) == 1 else member.label for member in members]
