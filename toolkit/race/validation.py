"""Where runs are scored and where their choices are made.

- The yardstick: identity-disjoint folds (one split, or more folds when few identities are held
  out). Every run, zero-shot, trained or ensemble, is scored on the same folds, pooled, so runs
  are compared on one measure.
- The choice split: a strategy that fits nothing makes its choices (flip, post-processing) on
  every training identity in its validation roles (capped at MAX_CHOICE_IMAGES images: the
  yardstick's identities, then others drawn at random); a trained strategy on its folds.
- Choosing: among the candidates, the best score, unless a simpler one is tied with it within
  the bootstrap interval (toolkit.retrieval.uncertainty.simplest_tied).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from toolkit.data.dataset import LabelledImage
from toolkit.data.split import ValidationSplit, make_validation_folds, role_split

MAX_CHOICE_IMAGES = 2000


def split_paths(split: ValidationSplit) -> list[Path]:
    """A split's images as they are embedded: its queries, then its gallery."""
    return [item.path for item in split.queries + split.gallery]


@dataclass(frozen=True)
class Yardstick:
    folds: list[ValidationSplit]
    choice: ValidationSplit

    @classmethod
    def make(cls, training: Sequence[LabelledImage], held_out_fraction: float, seed: int,
             gallery_pattern: str | None, max_folds: int, max_choice_images: int = MAX_CHOICE_IMAGES) -> "Yardstick":
        folds = make_validation_folds(training, held_out_fraction, seed, gallery_pattern=gallery_pattern,
                                      max_folds=max_folds)
        held = set().union(*(fold.held_out_identities for fold in folds))
        others = sorted({item.label for item in training} - held)
        random.Random(f"choice/{seed}").shuffle(others)
        counts: dict[str, int] = {}
        for item in training:
            counts[item.label] = counts.get(item.label, 0) + 1
        chosen, images = set(held), sum(counts[label] for label in held)
        for label in others:
            if images + counts[label] > max_choice_images:
                break
            chosen.add(label)
            images += counts[label]
        roles = role_split([item for item in training if item.label in chosen], seed, gallery_pattern)
        return cls(folds=folds, choice=roles)

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
