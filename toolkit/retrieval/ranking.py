"""Rankings as the race makes them, in one place: the validation split with unreadable images left
out, and the test gallery ranked for each query with unreadable gallery images after every
readable one (whatever a re-ranking recipe does to their scores)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.recipes import Recipe, ranked_indices


@dataclass
class ValidationRows:
    """The readable part of embedded validation images (queries first, then gallery)."""
    query: np.ndarray
    gallery: np.ndarray
    query_labels: list[str]
    gallery_labels: list[str]
    query_paths: list[Path]
    gallery_paths: list[Path]


def readable_validation(embeddings: Embeddings, split) -> ValidationRows:
    """The validation split's query and gallery rows of `embeddings` (embedded as queries + gallery),
    unreadable images left out. `split` has `.queries` and `.gallery` (LabelledImage lists)."""
    count = len(split.queries)
    readable = embeddings.readable_mask
    queries = [item for item, ok in zip(split.queries, readable[:count]) if ok]
    gallery = [item for item, ok in zip(split.gallery, readable[count:]) if ok]
    return ValidationRows(query=embeddings.vectors[:count][readable[:count]],
                          gallery=embeddings.vectors[count:][readable[count:]],
                          query_labels=[item.label for item in queries], gallery_labels=[item.label for item in gallery],
                          query_paths=[item.path for item in queries], gallery_paths=[item.path for item in gallery])


def rank_gallery(embeddings: Embeddings, query_count: int, recipe: Recipe, k: int) -> np.ndarray:
    """Top-k gallery rows (0-based within the gallery) per query of embeddings laid out as queries
    then gallery. The recipe ranks the readable gallery; unreadable gallery images come last, so a
    query is always answered with k names. Unreadable queries are answered from their placeholder."""
    readable = embeddings.readable_mask[query_count:]
    vectors = embeddings.vectors
    queries, gallery = vectors[:query_count], vectors[query_count:]
    kept = np.flatnonzero(readable)
    if len(kept) == len(gallery):
        return ranked_indices(recipe, queries, gallery, k)
    top = kept[ranked_indices(recipe, queries, gallery[kept], min(k, len(kept)))] if len(kept) else \
        np.zeros((query_count, 0), dtype=np.int64)
    tail = np.flatnonzero(~readable)[:max(0, k - top.shape[1])]
    return np.concatenate([top, np.broadcast_to(tail, (query_count, len(tail)))], axis=1).astype(np.int64)
