"""Nearest-neighbour search by inner product (cosine on L2-normalised rows), with faiss, and the k best
columns of a score matrix that post-processing or an ensemble computed.

top_k searches exactly (one faiss call for a gallery within one chunk, bounded chunks beyond that,
the same answer either way) up to APPROXIMATE_ABOVE gallery rows, and through an approximate index
tuned to recall@10 >= 0.95 above it. The gallery may be a numpy memmap (np.load(path, mmap_mode="r")
of a .npy written with np.lib.format.open_memmap): it is read in chunks, never whole.
"""
from __future__ import annotations

import faiss
import numpy as np

from toolkit.retrieval.approximate_index import RECALL_SAMPLE, ApproximateIndex, sample_rows
from toolkit.retrieval.exact_search import EXACT_CHUNK_BYTES, exact_top_k

# Exact search costs queries x gallery x width multiply-adds, growing with the gallery; an index costs
# a build (k-means or a graph over every row) and a recall check (an exact search of a query sample)
# before it saves anything. Up to 10^5 rows exact search of thousands of queries takes seconds, less
# than that build; beyond it exact search grows to minutes at 10^6 rows while the index stays at
# seconds a 10^4-query batch (benchmarks/large_gallery.py measures both).
APPROXIMATE_ABOVE = 100_000


def top_k(query_vectors: np.ndarray, gallery_vectors, k: int,
          approximate_above: int = APPROXIMATE_ABOVE) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n_queries, min(k, n_gallery)), best first."""
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    gallery_shape = np.shape(gallery_vectors)
    if queries.ndim != 2 or len(gallery_shape) != 2 or queries.shape[1] != gallery_shape[1]:
        raise ValueError(f"query and gallery embeddings must be 2-D of one width, "
                         f"got {queries.shape} and {gallery_shape}")
    k = min(k, gallery_shape[0])
    if k == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
    if gallery_shape[0] > approximate_above and len(queries) > RECALL_SAMPLE:
        # (a query set no bigger than the recall sample is answered exactly: measuring would cost that)
        index = ApproximateIndex.build(gallery_vectors)
        index.tune(queries[sample_rows(len(queries), RECALL_SAMPLE)])
        return index.search(queries, k)
    if 4 * gallery_shape[0] * gallery_shape[1] > EXACT_CHUNK_BYTES:
        return exact_top_k(queries, gallery_vectors, k)
    gallery = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
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
