"""Ensembles of finished strategies, fused from the embeddings the race already holds.

Each member's embeddings are L2-normalised and concatenated with weights w_i:

    v = concat_i( sqrt(w_i) * e_i ) / sqrt(sum_i w_i)

so v_q . v_g = sum_i w_i (e_iq . e_ig) / sum_i w_i: the cosine similarity of fused vectors is the
weighted mean of the members' similarities. Members of any width combine, and fused vectors are
unit length again, ready for faiss and every re-ranking recipe of toolkit.retrieval.rerank.

The weights are searched on the validation split over a grid on the simplex (`simplex_grid`,
step 0.1: 63 points for 3 members, 282 for 4), each point scored by plain nearest neighbours from
the members' similarity matrices, computed once. An ensemble therefore costs seconds and embeds
no image again.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from toolkit.retrieval.encoder import l2_normalise
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.metrics import RetrievalScore, pooled_score, score_rankings
from toolkit.retrieval.search import best_columns

ENSEMBLE = "ensemble"          # the `strategy` of an ensemble run in the leaderboard
DEFAULT_STEP = 0.1


def fuse(members: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Rows of the members (each (n, d_i)) fused into (n, sum d_i) float32, as in the docstring."""
    if len(members) != len(weights) or not members:
        raise ValueError(f"fuse needs one weight per member, got {len(members)} members and {len(weights)} weights")
    weights = np.asarray(weights, dtype=np.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"ensemble weights must be >= 0 with a positive sum, not {weights.tolist()}")
    scales = np.sqrt(weights / weights.sum())
    parts = [l2_normalise(vectors) * np.float32(scale) for vectors, scale in zip(members, scales)]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def fuse_embeddings(members: Sequence[Embeddings], weights: Sequence[float]) -> Embeddings:
    """The members' embeddings of the same files, fused; a file unreadable for one is unreadable."""
    paths = members[0].paths
    if any(len(member.paths) != len(paths) for member in members):
        raise ValueError("ensemble members must hold embeddings of the same files")
    return Embeddings(paths=paths, vectors=fuse([member.vectors for member in members], weights),
                      problems=common_problems(members), from_cache=len(paths))


def common_problems(members: Sequence[Embeddings]) -> dict[int, str]:
    problems: dict[int, str] = {}
    for member in members:
        for row, reason in member.problems.items():
            problems.setdefault(row, reason)
    return problems


def with_problems(embeddings: Embeddings, problems: dict[int, str]) -> Embeddings:
    """The same embeddings with these rows marked unreadable (so that members drop the same rows)."""
    return replace(embeddings, problems=dict(problems))


def simplex_grid(count: int, step: float = DEFAULT_STEP) -> list[tuple[float, ...]]:
    """Weights summing to 1 in multiples of `step`, at least two of them positive (one member alone
    is a run of its own already)."""
    units = round(1 / step)
    grid = []
    for cuts in itertools.combinations(range(units + count - 1), count - 1):   # stars and bars
        bounds = (-1, *cuts, units + count - 1)
        parts = [bounds[i + 1] - bounds[i] - 1 for i in range(count)]
        if sum(part > 0 for part in parts) >= 2:
            grid.append(tuple(part / units for part in parts))
    return grid


@dataclass
class WeightSearch:
    weights: tuple[float, ...]
    score: RetrievalScore        # plain nearest neighbours with these weights
    tried: int
    complete: bool               # False when the deadline cut the grid short

    def describe(self) -> str:
        return f"{self.tried} weightings tried on validation" + ("" if self.complete else " (cut short by the budget)")


def search_weights(members: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], labels: Sequence[tuple[Sequence, Sequence]],
                   step: float = DEFAULT_STEP, k: int = 10, deadline: float | None = None) -> WeightSearch:
    """The grid point with the best validation score, pooled over folds. `members[m][f]` is member
    m's (query, gallery) vectors of fold f, `labels[f]` that fold's (query labels, gallery labels);
    `deadline` (time.monotonic) ends the search early with the best so far."""
    similarities = [[l2_normalise(query) @ l2_normalise(gallery).T for query, gallery in member] for member in members]
    grid = simplex_grid(len(members), step)
    best: tuple[tuple[float, ...], RetrievalScore] | None = None
    tried = 0
    for weights in grid:
        if best is not None and deadline is not None and time.monotonic() > deadline:
            break
        per_fold = []
        for fold, (query_labels, gallery_labels) in enumerate(labels):
            fused = sum(np.float32(weight) * member[fold] for weight, member in zip(weights, similarities))
            gallery = np.asarray(gallery_labels, dtype=object)
            per_fold.append(score_rankings(gallery[best_columns(fused, k)].tolist(), list(query_labels),
                                           list(gallery_labels)))
        score = pooled_score(per_fold)
        tried += 1
        if best is None or score.score > best[1].score:
            best = (weights, score)
    return WeightSearch(weights=best[0], score=best[1], tried=tried, complete=tried == len(grid))


@dataclass
class Ensemble:
    """What build_ensemble found: the members kept (a positive weight), their weights, the fused
    validation folds' and test embeddings, and how the search went."""
    members: list[int]               # positions in the members given
    weights: list[float]
    validation: list[Embeddings]     # one per fold
    test: Embeddings
    search: WeightSearch


def build_ensemble(validation: Sequence[Sequence[Embeddings]], test: Sequence[Embeddings],
                   readable: Callable[[Embeddings, int], tuple], deadline: float | None = None) -> Ensemble:
    """Search the weights of the members on the validation folds (`validation[m][f]`: member m's
    embeddings of fold f) and fuse their embeddings. `readable(e, f)` gives fold f's (query,
    gallery, query labels, gallery labels) of embeddings e, unreadable rows left out; the rows
    unreadable for any member are left out for all of them."""
    folds = len(validation[0])
    aligned = []
    for fold in range(folds):
        problems = common_problems([member[fold] for member in validation])
        aligned.append([with_problems(member[fold], problems) for member in validation])
    rows = [[readable(aligned[fold][position], fold) for fold in range(folds)] for position in range(len(validation))]
    search = search_weights([[(query, gallery) for query, gallery, _, _ in member] for member in rows],
                            [(query_labels, gallery_labels) for _, _, query_labels, gallery_labels in rows[0]],
                            deadline=deadline)
    kept = [position for position, weight in enumerate(search.weights) if weight > 0]
    weights = [search.weights[position] for position in kept]
    return Ensemble(members=kept, weights=weights, search=search,
                    validation=[fuse_embeddings([aligned[fold][position] for position in kept], weights)
                                for fold in range(folds)],
                    test=fuse_embeddings([test[position] for position in kept], weights))


def ensemble_label(labels: Sequence[str], weights: Sequence[float]) -> str:
    """ensemble[face-zs=0.7,cnn-zs=0.3]: members with a positive weight, heaviest first."""
    members = sorted(((weight, label) for label, weight in zip(labels, weights) if weight > 0),
                     key=lambda pair: -pair[0])
    total = sum(weight for weight, _ in members)
    return f"{ENSEMBLE}[" + ",".join(f"{label}={weight / total:.2g}" for weight, label in members) + "]"
