"""Exact inner-product search over a gallery read in bounded chunks (an array or a numpy memmap on
disk), giving the same answer as one faiss flat search over the whole gallery, ties included.

faiss's flat search keeps each query's best k in a heap fed in gallery order: results come best
first, equal scores higher index first, and at the k-th place a tie goes to the tied rows that
arrived while fewer than k rows scoring at least that much had been seen. Chunks keep k + 1
candidates each, which shows whether the k-th place is tied; only rows with such a tie take a second
pass that collects every tied candidate and applies faiss's rule to them. (For k of 100 or more
faiss switches to a reservoir whose tie order at the k-th place this does not reproduce.)
"""
from __future__ import annotations

import faiss
import numpy as np

# The gallery rows one chunk copies into memory as float32 (faiss then scores each chunk against all
# queries in its own small blocks); 256 MiB is small beside any machine that runs the race and large
# enough that the per-chunk overhead is negligible. A gallery within one chunk is searched in one call.
EXACT_CHUNK_BYTES = 256 * 2**20
# faiss scores the gallery in blocks of this many rows: chunks are whole blocks, so every score is
# computed exactly as in a single search over the whole gallery.
FAISS_GALLERY_BLOCK = 1024


def chunk_rows(width: int, chunk_bytes: int = EXACT_CHUNK_BYTES) -> int:
    """Gallery rows per chunk: whole faiss blocks within chunk_bytes (one block at least)."""
    blocks = max(1, chunk_bytes // (4 * max(width, 1) * FAISS_GALLERY_BLOCK))
    return blocks * FAISS_GALLERY_BLOCK


def gallery_chunks(gallery, rows: int):
    """(first row, float32 contiguous rows) of the gallery, rows at a time: a memmap is read a chunk
    at a time, never whole."""
    for start in range(0, gallery.shape[0], rows):
        yield start, np.ascontiguousarray(gallery[start:start + rows], dtype=np.float32)


def _best_first(similarities: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((-indices, -similarities), axis=1)[:, :k]
    return np.take_along_axis(similarities, order, 1), np.take_along_axis(indices, order, 1)


def _chunk_search(queries: np.ndarray, chunk: np.ndarray, start: int, k: int):
    similarities, indices = faiss.knn(queries, chunk, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
    return similarities, indices + start


def exact_top_k(queries: np.ndarray, gallery, k: int,
                chunk_bytes: int = EXACT_CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n_queries, min(k, gallery rows)), best first; the gallery read in
    chunks of chunk_bytes. Equal to faiss.IndexFlatIP over the whole gallery (k < 100)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, gallery.shape[0])
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    rows = chunk_rows(queries.shape[1], chunk_bytes)
    best_similarities = np.zeros((len(queries), 0), np.float32)
    best_indices = np.zeros((len(queries), 0), np.int64)
    for start, chunk in gallery_chunks(gallery, rows):
        similarities, indices = _chunk_search(queries, chunk, start, k + 1)
        best_similarities, best_indices = _best_first(np.concatenate([best_similarities, similarities], 1),
                                                      np.concatenate([best_indices, indices], 1), k + 1)
    if best_similarities.shape[1] > k:
        tied = np.flatnonzero(best_similarities[:, k - 1] == best_similarities[:, k])
        if len(tied):
            _settle_ties(queries, gallery, k, rows, tied, best_similarities, best_indices)
    return best_similarities[:, :k], best_indices[:, :k]


def _settle_ties(queries, gallery, k, rows, tied, best_similarities, best_indices) -> None:
    """Rows whose k-th score is tied: collect every candidate scoring at least the k-th score and
    keep faiss's choice among them (written into best_* in place)."""
    threshold = best_similarities[tied, k - 1]
    collected = [[] for _ in tied]
    for start, chunk in gallery_chunks(gallery, rows):
        depth = k + 1
        while True:  # deepen until each tied row's chunk list ends below its threshold (or the chunk ends)
            similarities, indices = _chunk_search(queries, chunk, start, depth)
            similarities, indices = similarities[tied], indices[tied]
            if depth >= len(chunk) or (similarities[:, -1] < threshold).all():
                break
            depth *= 2
        for row, (row_similarities, row_indices) in enumerate(zip(similarities, indices)):
            keep = row_similarities >= threshold[row]
            collected[row].append((row_similarities[keep], row_indices[keep]))
    for row, query in enumerate(tied):
        similarities = np.concatenate([part[0] for part in collected[row]])
        indices = np.concatenate([part[1] for part in collected[row]])
        chosen = _faiss_choice(similarities, indices, threshold[row], k)
        ordered = chosen[np.lexsort((-indices[chosen], -similarities[chosen]))]
        best_similarities[query, :k], best_indices[query, :k] = similarities[ordered], indices[ordered]


def _faiss_choice(similarities: np.ndarray, indices: np.ndarray, threshold: float, k: int) -> np.ndarray:
    """Positions faiss's heap keeps: all above the threshold, and of the rows tied at it, those among
    the first k (in gallery order) scoring at least it, the last of them when too many."""
    in_gallery_order = np.argsort(indices, kind="stable")
    above = in_gallery_order[similarities[in_gallery_order] > threshold]
    admitted = [position for position in in_gallery_order[:k] if similarities[position] == threshold]
    return np.concatenate([above, np.asarray(admitted[len(admitted) - (k - len(above)):], dtype=np.int64)])
