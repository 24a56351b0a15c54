"""The local validation split: identities held out of training/, as the test set holds them out.

Whole identities are held out (an identity is never on both the fit and the validation side).
Within each held-out identity the images take query or gallery roles; held-out identities with a
single image become gallery distractors, as the test gallery has distractors. By default roles are
drawn at random; `gallery_pattern` (a filename glob such as "*_s.*") gives the gallery role to
the matching files instead, when the training folder marks the stylised renderings by name.
Seeded and reproducible: the same inputs and seed give the same split. With few identities,
`make_validation_folds` adds folds holding out other identities; `role_split` puts every
identity in its roles, for strategies that fit nothing; `distractor_identities` and
`without_queries_of` give validation the test's share of gallery images that no query matches.
"""
from __future__ import annotations

import fnmatch
import random
from dataclasses import dataclass
from typing import Callable, Sequence

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


MIN_VALIDATION_IDENTITIES = 20   # a split holding out fewer identities that give queries gets folds
MIN_VALIDATION_QUERIES = 500     # ... and so does one with fewer queries: see make_validation_folds
MAX_FOLDS = 5


def make_validation_split(training: Sequence[LabelledImage], held_out_fraction: float = 0.2,
                          seed: int = 0, query_fraction: float = 0.5,
                          gallery_pattern: str | None = None) -> ValidationSplit:
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be between 0 and 1, not {held_out_fraction}")
    by_identity = _by_identity(training)
    identities = sorted(by_identity)
    pairable = _pairable(by_identity)
    rng = random.Random(seed)
    held_out_count = max(1, round(held_out_fraction * len(identities)))
    held_out = set(rng.sample(identities, min(held_out_count, len(identities))))
    if not held_out & set(pairable):  # at least one identity must give a query and its match
        held_out.add(rng.choice(pairable))
    return _holding_out(by_identity, held_out, seed, query_fraction, gallery_pattern)


def make_validation_folds(training: Sequence[LabelledImage], held_out_fraction: float = 0.2, seed: int = 0,
                          gallery_pattern: str | None = None, min_identities: int = MIN_VALIDATION_IDENTITIES,
                          max_folds: int = MAX_FOLDS, min_queries: int = 0,
                          shape: Callable[[ValidationSplit], ValidationSplit] | None = None) -> list[ValidationSplit]:
    """Identity-disjoint validation folds, each passed through `shape` (e.g. without_queries_of).
    The first is make_validation_split's; when the folds hold out fewer than `min_identities`
    identities that give a query, or give fewer than `min_queries` queries, more folds hold out
    other identities (groups of the same size, none held out twice) until there are enough or
    `max_folds`, so that a score pooled over the folds rests on more queries. Why queries count:
    a bootstrap interval narrows as one over the square root of the queries; with the 500 of
    MIN_VALIDATION_QUERIES a 90% interval on a score is about +-15 points, the size of the
    differences between post-processing recipes that a trained run chooses among (with 173 queries
    it was +-29 on lfw-style, wide enough to choose at random)."""
    shape = shape or (lambda fold: fold)
    first = shape(make_validation_split(training, held_out_fraction, seed, gallery_pattern=gallery_pattern))
    by_identity = _by_identity(training)
    pairable = set(_pairable(by_identity))
    folds, used = [first], set(first.held_out_identities)
    size = len(first.held_out_identities)
    rest = sorted(set(by_identity) - used)
    random.Random(f"folds/{seed}").shuffle(rest)
    def enough() -> bool:
        return (len(_query_identities(folds) & pairable) >= min_identities
                and sum(len(fold.queries) for fold in folds) >= min_queries)

    while rest and len(folds) < max_folds and not enough():
        group, rest = set(rest[:size]), rest[size:]
        if not group & pairable:
            continue
        folds.append(shape(_holding_out(by_identity, group, seed, 0.5, gallery_pattern)))
    return folds


def role_split(training: Sequence[LabelledImage], seed: int = 0,
               gallery_pattern: str | None = None) -> ValidationSplit:
    """Every identity in its validation roles and nothing left to fit on: where strategies that fit
    nothing make their choices. An image has the role here that it has in any fold."""
    by_identity = _by_identity(training)
    if not _pairable(by_identity):
        raise ValueError("validation needs at least one training identity with two or more images")
    return _holding_out(by_identity, set(by_identity), seed, 0.5, gallery_pattern)


def distractor_identities(training: Sequence[LabelledImage], seed: int, gallery_pattern: str | None,
                          gallery_per_query: float | None) -> set[str]:
    """Identities whose queries validation leaves out, keeping only their gallery images: the
    test gallery holds people no query shows, and validation should too. As many as it takes
    (drawn per identity, seeded) for the validation gallery to hold `gallery_per_query` images a
    query, the test's own ratio; none when validation already has that many or the ratio is unknown."""
    if not gallery_per_query:
        return set()
    everyone = role_split(training, seed, gallery_pattern)
    queries, gallery = len(everyone.queries), len(everyone.gallery)
    share = 1.0 - gallery / (queries * gallery_per_query) if queries else 0.0
    if share <= 0:
        return set()
    with_queries = sorted({item.label for item in everyone.queries})
    return {name for name in with_queries if random.Random(f"distractor/{seed}/{name}").random() < share}


def without_queries_of(split: ValidationSplit, distractors: set[str]) -> ValidationSplit:
    """The split with the queries of `distractors` left out (their gallery images stay, as
    distractors); at least one identity keeps its queries."""
    kept = [item for item in split.queries if item.label not in distractors]
    if not kept and split.queries:
        first = split.queries[0].label
        kept = [item for item in split.queries if item.label == first]
    return ValidationSplit(fit=split.fit, queries=kept, gallery=split.gallery)


def _by_identity(training: Sequence[LabelledImage]) -> dict[str, list[LabelledImage]]:
    by_identity: dict[str, list[LabelledImage]] = {}
    for item in training:
        by_identity.setdefault(item.label, []).append(item)
    return by_identity


def _pairable(by_identity: dict[str, list[LabelledImage]]) -> list[str]:
    pairable = [name for name in sorted(by_identity) if len(by_identity[name]) >= 2]
    if not pairable:
        raise ValueError("validation needs at least one training identity with two or more images")
    return pairable


def _query_identities(folds: Sequence[ValidationSplit]) -> set[str]:
    return {item.label for fold in folds for item in fold.queries}


def _holding_out(by_identity: dict[str, list[LabelledImage]], held_out: set[str], seed: int,
                 query_fraction: float, gallery_pattern: str | None) -> ValidationSplit:
    fit, queries, gallery = [], [], []
    for name in sorted(by_identity):
        images = sorted(by_identity[name], key=lambda item: str(item.path))
        if name not in held_out:
            fit.extend(images)
        elif len(images) == 1:
            gallery.extend(images)
        else:
            rng = random.Random(f"roles/{seed}/{name}")    # an image's role does not depend on the fold
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
