"""How sure a validation score is: bootstrap intervals over the validation queries, for one run's
score and for the difference between two runs scored on the same queries (paired)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.9


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[picks].mean(axis=1)


def score_interval(per_query: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES,
                   seed: int = 0) -> tuple[float, float]:
    """The central `level` interval of the mean of per-query scores over bootstrap resamples of
    the queries ((score, score) with fewer than two queries)."""
    values = np.asarray(per_query, dtype=np.float64)
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else 0.0
        return mean, mean
    means = _resampled_means(values, resamples, seed)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def difference_interval(better: np.ndarray, other: np.ndarray, level: float = LEVEL,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The interval of mean(better - other) over the same queries resampled together: when it
    holds 0, the two runs are tied on this validation."""
    better, other = np.asarray(better, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if better.shape != other.shape:
        raise ValueError(f"paired scores need the same queries: {better.shape} vs {other.shape}")
    return score_interval(better - other, level, resamples, seed)


@dataclass(frozen=True)
class Preference:
    """Which candidate was chosen; when a simpler one stood in for the best-scoring one (tied with
    it within the interval), the best one's index and the interval of best minus chosen."""
    chosen: int
    best: int
    interval: tuple[float, float] | None = None

    @property
    def simpler_chosen(self) -> bool:
        return self.chosen != self.best


def simplest_tied(scores: Sequence[float], per_query: Sequence[np.ndarray], complexity: Sequence[int],
                  finer: Sequence[float] | None = None, level: float = LEVEL) -> Preference:
    """The candidate to choose. The best score, unless others are tied with it (the paired interval
    of best minus them holds 0): then, among the tied candidates of the simplest complexity that
    has any, the one with the highest `finer` score (mAP@10, which uses every hit of a ranking
    and so separates candidates the coarse score cannot), then the highest score. Equal: the first."""
    indices = range(len(scores))
    finer = list(finer) if finer is not None else list(scores)
    best = max(indices, key=lambda index: (scores[index], -index))
    intervals: dict[int, tuple[float, float]] = {}
    for index in indices:
        if index != best:
            try:
                intervals[index] = difference_interval(per_query[best], per_query[index], level)
            except ValueError:       # not the same queries: not comparable, so not tied
                continue
    tied = [index for index in indices if index == best or (index in intervals and intervals[index][0] <= 0)]
    simplest = min(complexity[index] for index in tied)
    chosen = max((index for index in tied if complexity[index] == simplest),
                 key=lambda index: (finer[index], scores[index], -index))
    return Preference(chosen=chosen, best=best, interval=intervals.get(chosen))
