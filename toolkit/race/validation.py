"""Where runs are scored and where their choices are made.

- The yardstick: identity-disjoint folds (one split, or more folds when it holds out few
  identities or gives few queries: toolkit.data.split.make_validation_folds). Every run, zero-shot, trained or ensemble, is scored on the same folds, pooled, so runs
  are compared on one measure.
- The choice split: a strategy that fits nothing makes its choices (flip, post-processing) on
  every training identity in its validation roles (capped at MAX_CHOICE_IMAGES images: the
  yardstick's identities, then others drawn at random); a trained strategy on its folds.
- Both are shaped like the test: as many gallery images a query as the test has, by leaving out
  the queries of some identities, whose gallery images are then distractors no query matches.
- Choosing: among the candidates, the best score, unless a simpler one is tied with it within
  the bootstrap interval (toolkit.retrieval.uncertainty.simplest_tied).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolkit.data.dataset import LabelledImage
from toolkit.data.split import (MIN_VALIDATION_QUERIES, ValidationSplit, distractor_identities, make_validation_folds, role_split,
                                without_queries_of)

MAX_CHOICE_IMAGES = 2000


def gallery_per_query(data) -> float | None:
    """The test's gallery images per query (None without queries): what validation is shaped to."""
    return len(data.gallery) / len(data.queries) if data.queries else None


def split_paths(split: ValidationSplit) -> list[Path]:
    """A split's images as they are embedded: its queries, then its gallery."""
    return [item.path for item in split.queries + split.gallery]


@dataclass(frozen=True)
class Yardstick:
    folds: list[ValidationSplit]
    choice: ValidationSplit

    @classmethod
    def make(cls, training: Sequence[LabelledImage], held_out_fraction: float, seed: int,
             gallery_pattern: str | None, max_folds: int, gallery_per_query: float | None = None,
             max_choice_images: int = MAX_CHOICE_IMAGES) -> "Yardstick":
        """The folds and the choice split; `gallery_per_query` (the test's gallery images per query)
        shapes both like the test: the queries of some identities are left out, so that their
        gallery images are distractors no query matches (toolkit.data.split.distractor_identities)."""
        distractors = distractor_identities(training, seed, gallery_pattern, gallery_per_query)
        folds = make_validation_folds(training, held_out_fraction, seed, gallery_pattern=gallery_pattern,
                                      max_folds=max_folds, min_queries=MIN_VALIDATION_QUERIES,
                                      shape=lambda fold: without_queries_of(fold, distractors))
        queries = [item for fold in folds for item in fold.queries]
        gallery = [item for fold in folds for item in fold.gallery]
        held = set().union(*(fold.held_out_identities for fold in folds))
        others = sorted({item.label for item in training} - held)
        random.Random(f"choice/{seed}").shuffle(others)
        if others:
            rest = without_queries_of(role_split([item for item in training if item.label in set(others)], seed,
                                                 gallery_pattern), distractors)
            by_label: dict[str, list[list[LabelledImage]]] = {label: [[], []] for label in others}
            for role, items in enumerate((rest.queries, rest.gallery)):
                for item in items:
                    by_label[item.label][role].append(item)
            for label in others:
                more_queries, more_gallery = by_label[label]
                if len(queries) + len(gallery) + len(more_queries) + len(more_gallery) > max_choice_images:
                    break
                queries += more_queries
                gallery += more_gallery
        return cls(folds=folds, choice=ValidationSplit(fit=[], queries=queries, gallery=gallery))

    @property
    def fold_paths(self) -> list[list[Path]]:
        return [split_paths(fold) for fold in self.folds]

    @property
    def choice_paths(self) -> list[Path]:
        return split_paths(self.choice)

    def describe(self) -> str:
        queries = sum(len(fold.queries) for fold in self.folds)
        gallery = sum(len(fold.gallery) for fold in self.folds)
        identities = sum(len(fold.held_out_identities) for fold in self.folds)
        folds = f"{len(self.folds)} folds, " if len(self.folds) > 1 else ""
        return (f"validation: {folds}{identities} held-out identities, {queries} queries, {gallery} gallery; "
                f"zero-shot choices on {len(self.choice.held_out_identities)} identities "
                f"({len(self.choice.queries)} queries, {len(self.choice.gallery)} gallery)")
