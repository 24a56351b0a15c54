"""The local validation split: identities held out of training/, as the test set holds them out.

Whole identities are held out (an identity is never on both the fit and the validation side).
Within each held-out identity the images take query or gallery roles; held-out identities with a
single image become gallery distractors, as the test gallery has distractors. By default roles are
drawn at random; `gallery_pattern` (a filename glob such as "*_s.*") gives the gallery role to
the matching files instead, when the training folder marks the stylised renderings by name.
Seeded and reproducible: the same inputs and seed give the same split.
"""
from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass
from typing import Sequence

from toolkit.data.dataset import LabelledImage


@dataclass(frozen=True)
class ValidationSplit:
    fit: list[LabelledImage]
    queries: list[LabelledImage]
    gallery: list[LabelledImage]

    @property
    def held_out_identities(self) -> set[str]:
        return {item.label for item in self.queries} | {item.label for item in self.gallery}


def detect_gallery_pattern(training: Sequence[LabelledImage]) -> str | None:
    """A filename glob marking the stylised renderings in training/, when the names carry one.

    Looks at the last "_"- or "-"-separated token of each file's stem (e.g. the "s" of
    Jay_Garner_000_s.jpg): a non-numeric token on 20-80% of the files, present in most identities
    that have two or more images, becomes "*_s.*". None when no such marker stands out.
    """
    by_identity: dict[str, list[str]] = {}
    for item in training:
        by_identity.setdefault(item.label, []).append(item.path.stem)
    counts: dict[tuple[str, str], int] = {}
    identities_with: dict[tuple[str, str], set[str]] = {}
    for label, stems in by_identity.items():
        for stem in stems:
            for separator in ("_", "-"):
                head, found, token = stem.rpartition(separator)
                if found and head and token and not token.isdigit() and token != label:
                    counts[(separator, token)] = counts.get((separator, token), 0) + 1
                    identities_with.setdefault((separator, token), set()).add(label)
    total = len(training)
    multi = [label for label, stems in by_identity.items() if len(stems) >= 2]
    candidates = [(count, key) for key, count in counts.items()
                  if 0.2 * total <= count <= 0.8 * total
                  and len(identities_with[key] & set(multi)) >= 0.5 * max(1, len(multi))]
    if not candidates:
        return None
    _, (separator, token) = max(candidates)
    return f"*{separator}{token}.*"


def make_validation_split(training: Sequence[LabelledImage], held_out_fraction: float = 0.2,
                          seed: int = 0, query_fraction: float = 0.5,
                          gallery_pattern: str | None = None) -> ValidationSplit:
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be between 0 and 1, not {held_out_fraction}")
    by_identity: dict[str, list[LabelledImage]] = {}
    for item in training:
        by_identity.setdefault(item.label, []).append(item)
    identities = sorted(by_identity)
    pairable = [name for name in identities if len(by_identity[name]) >= 2]
    if not pairable:
        raise ValueError("validation needs at least one training identity with two or more images")
    rng = random.Random(seed)
    held_out_count = max(1, round(held_out_fraction * len(identities)))
    held_out = set(rng.sample(identities, min(held_out_count, len(identities))))
    if not held_out & set(pairable):  # at least one identity must give a query and its match
        held_out.add(rng.choice(pairable))

    fit, queries, gallery = [], [], []
    for name in identities:
        images = sorted(by_identity[name], key=lambda item: str(item.path))
        if name not in held_out:
            fit.extend(images)
        elif len(images) == 1:
            gallery.extend(images)
        else:
            query_part, gallery_part = _assign_roles(images, rng, query_fraction, gallery_pattern)
            queries.extend(query_part)
            gallery.extend(gallery_part)
    return ValidationSplit(fit=fit, queries=queries, gallery=gallery)


def _assign_roles(images: list[LabelledImage], rng: random.Random, query_fraction: float,
                  gallery_pattern: str | None) -> tuple[list[LabelledImage], list[LabelledImage]]:
    if gallery_pattern:
        marked = [item for item in images if fnmatch.fnmatch(item.path.name, gallery_pattern)]
        unmarked = [item for item in images if item not in marked]
        if marked and unmarked:
            return unmarked, marked
    shuffled = images[:]
    rng.shuffle(shuffled)
    query_count = min(len(shuffled) - 1, max(1, round(query_fraction * len(shuffled))))
    return shuffled[:query_count], shuffled[query_count:]
