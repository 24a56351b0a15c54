"""A fitted strategy's validation: embed its images, choose flip TTA and post-processing, and
score the choice on the yardstick (toolkit.race.validation).

A zero-shot strategy embeds the choice split once per flip setting; its yardstick folds are
subsets of those embeddings, so nothing is embedded twice. A trained strategy has one encoder
per fold and embeds each fold's held-out images with that fold's encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from toolkit.race.validation import Yardstick
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.encoder import Encoder
from toolkit.retrieval.metrics import RetrievalScore
from toolkit.retrieval.ranking import ValidationRows, readable_validation
from toolkit.retrieval.recipes import PLAIN, Fold, Recipe, recipe_complexity, score_recipes
from toolkit.retrieval.uncertainty import Preference, simplest_tied

Embed = Callable[[Encoder, Sequence[Path], bool, str], Embeddings]   # (encoder, paths, flip, what)


def as_fold(rows: ValidationRows) -> Fold:
    return rows.query, rows.gallery, rows.query_labels, rows.gallery_labels


def yardstick_folds(fold_embeddings: Sequence[Embeddings], yardstick: Yardstick) -> list[Fold]:
    """Each fold's readable query and gallery rows."""
    return [as_fold(readable_validation(embeddings, fold))
            for embeddings, fold in zip(fold_embeddings, yardstick.folds)]


def yardstick_score(fold_embeddings: Sequence[Embeddings], yardstick: Yardstick, chosen: Recipe) -> RetrievalScore:
    """The score of a recipe pooled over the yardstick's folds."""
    return dict(score_recipes(yardstick_folds(fold_embeddings, yardstick), [chosen]))[chosen]


@dataclass
class Evaluation:
    flip: bool
    recipe: Recipe
    validation: RetrievalScore          # on the yardstick, with the chosen flip and recipe
    baseline: RetrievalScore            # on the yardstick, plain (no flip when it was tried)
    folds: list[Embeddings]             # the yardstick folds' embeddings at the chosen flip
    first: Embeddings                   # the first validation embeddings (for unreadable-file reports)
    preference: Preference
    best_label: str = ""                # the best-scoring choice, when a simpler one stood in for it

    @property
    def note(self) -> str:
        if not self.preference.simpler_chosen:
            return ""
        low, high = self.preference.interval
        return (f"chose {describe_choice(self.flip, self.recipe)} over {self.best_label}: tied on validation "
                f"(difference {low:+.1f} to {high:+.1f}), simpler or higher mAP@10")


def describe_choice(flip: bool, chosen: Recipe) -> str:
    return " + ".join((["flip"] if flip else []) + ([chosen.describe()] if not chosen.plain else [])) or "plain"


def evaluate(encoders: Sequence[Encoder], zero_shot: bool, yardstick: Yardstick, flips: Sequence[bool],
             recipes: Sequence[Recipe] | None, embed: Embed) -> Evaluation:
    """Choose (flip, recipe) and score it. `encoders`: one (zero-shot) or one per fold."""
    candidates: list[tuple[bool, Recipe, RetrievalScore]] = []
    fold_embeddings: dict[bool, list[Embeddings]] = {}
    first: Embeddings | None = None
    for flip in flips:
        if zero_shot:
            whole = embed(encoders[0], yardstick.choice_paths, flip, "validation")
            choice_folds = [as_fold(readable_validation(whole, yardstick.choice))]
            fold_embeddings[flip] = [whole.select(paths) for paths in yardstick.fold_paths]
            first = first or whole
        else:
            several = len(yardstick.folds) > 1
            fold_embeddings[flip] = [embed(encoder, paths, flip, f"validation fold {number + 1}" if several
                                           else "validation")
                                     for number, (encoder, paths) in enumerate(zip(encoders, yardstick.fold_paths))]
            choice_folds = yardstick_folds(fold_embeddings[flip], yardstick)
            first = first or fold_embeddings[flip][0]
        candidates += [(flip, candidate, score) for candidate, score in score_recipes(choice_folds, recipes)]
    preference = simplest_tied([score.score for _, _, score in candidates],
                               [score.per_query for _, _, score in candidates],
                               [recipe_complexity(candidate) for _, candidate, _ in candidates],
                               [score.map_at_10 for _, _, score in candidates])
    flip, chosen, _ = candidates[preference.chosen]
    best_flip, best_recipe, _ = candidates[preference.best]
    plain_flip = False if False in fold_embeddings else flips[0]
    return Evaluation(flip=flip, recipe=chosen, validation=yardstick_score(fold_embeddings[flip], yardstick, chosen),
                      baseline=yardstick_score(fold_embeddings[plain_flip], yardstick, PLAIN),
                      folds=fold_embeddings[flip], first=first, preference=preference,
                      best_label=describe_choice(best_flip, best_recipe))
