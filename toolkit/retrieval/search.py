"""Exact nearest-neighbour search by inner product (cosine on L2-normalised rows), with faiss, and
the k best columns of a score matrix that post-processing or an ensemble computed."""
from __future__ import annotations

import faiss
import numpy as np


def top_k(query_vectors: np.ndarray, gallery_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n_queries, min(k, n_gallery)), best first."""
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery embeddings must be 2-D of one width, "
                         f"got {queries.shape} and {gallery.shape}")
    k = min(k, gallery.shape[0])
    if k == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    similarities, indices = index.search(queries, k)
    return similarities, indices


def best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest scores' columns per row, best first (ties: lower column first)."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, order, 1)
