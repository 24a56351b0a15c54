"""Post-processing recipes: named steps from a registry, chained, stored as {name, params} and
chosen on validation.

A recipe is a chain of steps. Transforms change the embeddings (`centre`, `alpha-qe`, `dba`);
scorers turn them into a score matrix, higher is better (`k-reciprocal` from the features,
`dual-softmax` and `sinkhorn` from the scores before them). The empty chain is plain cosine
nearest neighbours ("none"). A recipe is stored as a list of {"name", "params"} (to_record) and
read back by name, so any recipe of registered steps can be replayed, not only the grid's.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from toolkit.race.config import parse_value
from toolkit.retrieval import rerank
from toolkit.retrieval.metrics import RetrievalScore, pooled_score, score_rankings
from toolkit.retrieval.search import best_columns, top_k
from toolkit.retrieval.uncertainty import Preference, simplest_tied

Transform = Callable[..., tuple[np.ndarray, np.ndarray]]     # (query, gallery, **params) -> (query, gallery)
Scorer = Callable[..., np.ndarray]                           # (scores, query, gallery, **params) -> scores

TRANSFORMS: dict[str, Transform] = {
    "centre": lambda query, gallery: rerank.centre_sides(query, gallery),
    "dba": lambda query, gallery, n, alpha: (query, rerank.database_augmentation(gallery, n, alpha)),
    "alpha-qe": lambda query, gallery, n, alpha: (rerank.alpha_query_expansion(query, gallery, n, alpha), gallery),
}
SCORERS: dict[str, Scorer] = {
    "k-reciprocal": lambda scores, query, gallery, **params: -rerank.k_reciprocal_distance(query, gallery, **params),
    "dual-softmax": lambda scores, query, gallery, temperature: rerank.dual_softmax(scores, temperature),
    "sinkhorn": lambda scores, query, gallery, temperature: rerank.sinkhorn(scores, temperature),
}
FROM_FEATURES = ("k-reciprocal",)        # scorers that read the features, not the scores before them


@dataclass(frozen=True)
class Step:
    """One registered step and its parameters."""
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.name not in TRANSFORMS and self.name not in SCORERS:
            known = ", ".join(sorted(TRANSFORMS) + sorted(SCORERS))
            raise ValueError(f"unknown post-processing step {self.name!r}; known: {known}")

    def describe(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}(" + ", ".join(f"{key}={value}" for key, value in self.params) + ")"


def step(name: str, **params: Any) -> Step:
    return Step(name, tuple(sorted(params.items())))


@dataclass(frozen=True)
class Recipe:
    """Transforms, then scorers; no steps: plain nearest neighbours."""
    steps: tuple[Step, ...] = ()

    def __post_init__(self):
        kinds = [step_.name in SCORERS for step_ in self.steps]
        if kinds != sorted(kinds):
            raise ValueError(f"post-processing {self.describe()}: transforms come before scorers")
        scorers = [step_.name for step_ in self.steps if step_.name in SCORERS]
        if any(name in FROM_FEATURES for name in scorers[1:]):
            raise ValueError(f"post-processing {self.describe()}: {scorers[1]} must be the first scorer")

    @property
    def plain(self) -> bool:
        return not self.steps

    def describe(self) -> str:
        return " + ".join(step_.describe() for step_ in self.steps) or "none"

    def to_record(self) -> list[dict[str, Any]]:
        return [{"name": step_.name, "params": dict(step_.params)} for step_ in self.steps]

    @classmethod
    def from_record(cls, value: "Recipe | str | Sequence | None") -> "Recipe":
        """A recipe from to_record()'s list, its JSON text, or the display text older rows kept
        ("none", "dual-softmax(temperature=0.1)", "dba+alpha-qe(alpha=3.0, n=1)")."""
        if isinstance(value, Recipe):
            return value
        if value is None or value in ("", "none"):
            return cls()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return _from_display_text(value)
        return cls(tuple(step(item["name"], **item.get("params", {})) for item in value))


def recipe(*steps: Step) -> Recipe:
    return Recipe(tuple(steps))


PLAIN = Recipe()
_DISPLAY = re.compile(r"^\s*([\w+-]+)\s*(?:\((.*)\))?\s*$")


def _from_display_text(text: str) -> Recipe:
    steps = []
    for part in text.split(" + "):
        match = _DISPLAY.match(part)
        if not match:
            raise ValueError(f"cannot read post-processing {text!r}")
        params = {}
        for pair in filter(None, (item.strip() for item in (match.group(2) or "").split(","))):
            key, _, number = pair.partition("=")
            params[key.strip()] = parse_value(number.strip())
        steps += [step(name, **params) for name in match.group(1).split("+")]   # "dba+alpha-qe" shared its params
    return Recipe(tuple(steps))


def ranked_indices(chosen: Recipe, query: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Top-k gallery indices per query after applying the recipe (ties: lower index first)."""
    k = min(k, len(gallery))
    scores = None
    for step_ in chosen.steps:
        params = dict(step_.params)
        if step_.name in TRANSFORMS:
            query, gallery = TRANSFORMS[step_.name](query, gallery, **params)
        else:
            if scores is None:
                scores = query @ gallery.T
            scores = SCORERS[step_.name](scores, query, gallery, **params)
    if scores is None:
        return top_k(query, gallery, k)[1]
    return best_columns(scores, k)


def candidate_recipes() -> list[Recipe]:
    """The grid the race searches on validation: query expansion and database augmentation,
    k-reciprocal, the one-person-per-gallery-image scorers (dual-softmax, Sinkhorn), per-side
    centring in front of them, and their chains."""
    k_reciprocal = [step("k-reciprocal", k1=k1, k2=k2, lambda_value=0.3) for k1, k2 in itertools.product((10, 20), (3, 6))]
    grid = [PLAIN]
    grid += [recipe(step("alpha-qe", n=n, alpha=alpha)) for n, alpha in itertools.product((1, 2, 3), (1.0, 3.0))]
    grid += [recipe(step("dba", n=n, alpha=alpha)) for n, alpha in itertools.product((1, 2), (1.0, 3.0))]
    grid += [recipe(step("dba", n=n, alpha=3.0), step("alpha-qe", n=n, alpha=3.0)) for n in (1, 2)]
    grid += [recipe(kind) for kind in k_reciprocal]
    grid += [recipe(step("dual-softmax", temperature=t)) for t in (0.02, 0.05, 0.1)]
    grid += [recipe(step("sinkhorn", temperature=t)) for t in (0.02, 0.05, 0.1)]
    grid += [recipe(step("alpha-qe", n=1, alpha=3.0), step("sinkhorn", temperature=0.05))]
    grid += [recipe(k_reciprocal[0], step("sinkhorn", temperature=t)) for t in (0.05, 0.1)]
    centre = step("centre")
    grid += [recipe(centre), recipe(centre, step("alpha-qe", n=1, alpha=3.0))]
    grid += [recipe(centre, kind) for kind in k_reciprocal]
    grid += [recipe(centre, step("sinkhorn", temperature=t)) for t in (0.05, 0.1)]
    grid += [recipe(centre, step("dual-softmax", temperature=0.05)),
             recipe(centre, k_reciprocal[0], step("sinkhorn", temperature=0.1))]
    return grid


@dataclass
class PostProcessingChoice:
    """Every recipe's validation score, and the one chosen: the best, or a simpler recipe tied
    with it within the bootstrap interval (plain nearest neighbours before any re-ranking)."""
    best: Recipe
    scores: list[tuple[Recipe, RetrievalScore]] = field(default_factory=list)
    preference: Preference | None = None

    @property
    def baseline(self) -> RetrievalScore:
        return next(score for candidate, score in self.scores if candidate.plain)

    @property
    def best_score(self) -> RetrievalScore:
        return next(score for candidate, score in self.scores if candidate == self.best)


Fold = tuple[np.ndarray, np.ndarray, Sequence, Sequence]     # query, gallery, query labels, gallery labels


def score_recipes(folds: Sequence[Fold], recipes: Sequence[Recipe] | None = None,
                  k: int = 10) -> list[tuple[Recipe, RetrievalScore]]:
    """Each recipe's score pooled over the validation folds (plain first, added when missing)."""
    candidates = list(recipes or candidate_recipes())
    if PLAIN not in candidates:
        candidates.insert(0, PLAIN)
    scored = []
    for candidate in candidates:
        per_fold = []
        for query, gallery, query_labels, gallery_labels in folds:
            labels = np.asarray(gallery_labels, dtype=object)
            indices = ranked_indices(candidate, query, gallery, k)
            per_fold.append(score_rankings(labels[indices].tolist(), list(query_labels), list(gallery_labels)))
        scored.append((candidate, pooled_score(per_fold)))
    return scored


def recipe_complexity(candidate: Recipe) -> int:
    """Plain nearest neighbours is the simplest; every step adds one."""
    return len(candidate.steps)


def choose_recipe(folds: Sequence[Fold], recipes: Sequence[Recipe] | None = None, k: int = 10) -> PostProcessingChoice:
    """Score every recipe pooled over the validation folds; keep the best unless a simpler one
    (then the higher mAP@10) ties with it."""
    scored = score_recipes(folds, recipes, k)
    preference = simplest_tied([score.score for _, score in scored], [score.per_query for _, score in scored],
                               [recipe_complexity(candidate) for candidate, _ in scored],
                               [score.map_at_10 for _, score in scored])
    return PostProcessingChoice(best=scored[preference.chosen][0], scores=scored, preference=preference)


def choose_post_processing(query: np.ndarray, gallery: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                           recipes: Sequence[Recipe] | None = None, k: int = 10) -> PostProcessingChoice:
    """choose_recipe on one validation fold."""
    return choose_recipe([(query, gallery, query_labels, gallery_labels)], recipes, k)
