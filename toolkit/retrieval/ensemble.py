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

Its validation score is cross-fitted (`cross_fitted_score`): weights and post-processing found on
the folds, then scored on those same folds, would be the best of some 60 x 36 tries and so above
what the test will give (with few identities it reached 1000.0 on validation and 508 on the
test). Each fold is therefore scored with the weights and recipe chosen on the other folds (with
one fold, on the other half of its query identities); the ensemble's submission uses the choice
made on all of them.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from toolkit.retrieval.encoder import l2_normalise
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.metrics import RetrievalScore, pooled_score, score_from_ranks, score_rankings
from toolkit.retrieval.recipes import Fold, Recipe, choose_recipe, score_recipes
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
    cross_fitted: RetrievalScore | None    # each fold scored with the weights and recipe chosen without it

    def describe(self, in_sample: RetrievalScore) -> str:
        """The search, and the validation score chosen on the very queries it scores beside the cross-fitted one."""
        if self.cross_fitted is None:
            return self.search.describe()
        return (f"{self.search.describe()}; validation cross-fitted {self.cross_fitted.score:.1f} (weights and "
                f"post-processing chosen without the queries scored; chosen on them: {in_sample.score:.1f})")


def build_ensemble(validation: Sequence[Sequence[Embeddings]], test: Sequence[Embeddings],
                   readable: Callable[[Embeddings, int], tuple], deadline: float | None = None,
                   recipes: Sequence[Recipe] | None = None) -> Ensemble:
    """Search the weights of the members on the validation folds (`validation[m][f]`: member m's
    embeddings of fold f) and fuse their embeddings. `readable(e, f)` gives fold f's (query,
    gallery, query labels, gallery labels) of embeddings e, unreadable rows left out; the rows
    unreadable for any member are left out for all of them. `recipes`: the post-processing
    candidates (None: all) that the cross-fitted score chooses among."""
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
                    cross_fitted=cross_fitted_score(rows, recipes, deadline),
                    validation=[fuse_embeddings([aligned[fold][position] for position in kept], weights)
                                for fold in range(folds)],
                    test=fuse_embeddings([test[position] for position in kept], weights))


def held_out_parts(folds: Sequence[Fold]) -> list[np.ndarray] | None:
    """With one fold, its queries split in two halves by identity (a boolean mask each: the
    gallery stays whole); None with several folds (each fold is then held out in turn), and
    [] when one fold's queries show fewer than two identities (nothing to hold out)."""
    if len(folds) > 1:
        return None
    query_labels = np.asarray(folds[0][2], dtype=object)
    identities = sorted(set(query_labels.tolist()), key=str)
    if len(identities) < 2:
        return []
    first = np.isin(query_labels, identities[::2])
    return [first, ~first]


def _fused(member_folds: Sequence[Fold], weights: Sequence[float]) -> Fold:
    """Each member's rows of one fold (the same queries and gallery), fused with these weights."""
    query_labels, gallery_labels = member_folds[0][2], member_folds[0][3]
    return (fuse([fold[0] for fold in member_folds], weights), fuse([fold[1] for fold in member_folds], weights),
            query_labels, gallery_labels)


def _queries(fold: Fold, mask: np.ndarray) -> Fold:
    query, gallery, query_labels, gallery_labels = fold
    return query[mask], gallery, [label for label, keep in zip(query_labels, mask) if keep], gallery_labels


def cross_fitted_score(rows: Sequence[Sequence[Fold]], recipes: Sequence[Recipe] | None = None,
                       deadline: float | None = None) -> RetrievalScore | None:
    """The ensemble's validation score with nothing chosen on the queries it scores: `rows[m][f]`
    is member m's readable rows of fold f. Each fold (with one fold, each half of its query
    identities) is scored with the weights searched and the recipe chosen on the others; the
    queries keep their order, so the score pairs with other runs' on the same queries. None when
    there is nothing to hold out."""
    masks = held_out_parts(rows[0])
    if masks == []:
        return None
    parts = ([[_queries(member[0], mask) for mask in masks] for member in rows] if masks is not None
             else [list(member) for member in rows])
    ranks, precisions = [], []
    for held in range(len(parts[0])):
        others = [[part for index, part in enumerate(member) if index != held] for member in parts]
        search = search_weights([[(query, gallery) for query, gallery, _, _ in member] for member in others],
                                [(fold[2], fold[3]) for fold in others[0]], deadline=deadline)
        fitted = [_fused([member[index] for member in others], search.weights) for index in range(len(others[0]))]
        recipe = choose_recipe(fitted, recipes).best
        score = dict(score_recipes([_fused([member[held] for member in parts], search.weights)], [recipe]))[recipe]
        ranks.append(score.ranks)
        precisions.append(score.precisions)
    if masks is not None:       # back in the fold's own query order
        order = np.argsort(np.concatenate([np.flatnonzero(mask) for mask in masks]), kind="stable")
        return score_from_ranks(np.concatenate(ranks)[order], np.concatenate(precisions)[order])
    return score_from_ranks(np.concatenate(ranks), np.concatenate(precisions))


def ensemble_label(labels: Sequence[str], weights: Sequence[float]) -> str:
    """ensemble[face-zs=0.7,cnn-zs=0.3]: members with a positive weight, heaviest first."""
    members = sorted(((weight, label) for label, weight in zip(labels, weights) if weight > 0),
                     key=lambda pair: -pair[0])
    total = sum(weight for weight, _ in members)
    return f"{ENSEMBLE}[" + ",".join(f"{label}={weight / total:.2g}" for weight, label in members) + "]"
