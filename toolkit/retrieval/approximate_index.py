"""An approximate faiss index over a large gallery (HNSW or IVF, chosen by size), tuned on a sample of
real queries until its recall@10 against exact search reaches RECALL_TARGET, and that recall printed.

    index = ApproximateIndex.build(gallery)          # an array or a numpy memmap, read in chunks
    index.tune(sample_queries)                       # raises nprobe / efSearch; prints one line
    similarities, indices = index.search(queries, k)
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from toolkit.machine.console import console, warn
from toolkit.retrieval.exact_search import chunk_rows, exact_top_k, gallery_chunks

RECALL_TARGET = 0.95
RECALL_AT = 10
# Queries the recall is measured on: enough for a recall good to about +-0.01, few enough that their
# exact search (the cost of measuring) stays a small part of the whole search.
RECALL_SAMPLE = 500
# HNSW for galleries up to this size: it needs no training sample and answers at high recall with few
# distance computations, but builds its graph one row at a time with random memory access, which on a
# few CPU cores grows to minutes past 10^5 rows. Above it IVF: k-means on a sample, then one BLAS-bound
# pass assigning the gallery chunk by chunk, several times faster to build (README, "Large galleries").
# top_k builds an index only above APPROXIMATE_ABOVE (10^5 too), so its own searches use IVF.
HNSW_UP_TO = 100_000
HNSW_NEIGHBOURS = 32
# faiss's rule of thumb is 4 to 16 sqrt(N) lists; one sqrt(N) keeps the k-means and the assignment of
# every row cheapest, and tuning raises nprobe for whatever recall fewer lists cost.
IVF_LISTS_PER_SQRT_ROWS = 1
IVF_TRAINING_ROWS_PER_LIST = 40  # faiss asks for at least 39 training rows per list
SEED = 0


class ApproximateIndex:
    """A faiss HNSW or IVF index with the gallery it was built from (kept where it was: a memmap stays
    on disk) for measuring recall and answering what the index leaves unanswered."""

    def __init__(self, index, gallery, kind: str, parameter_name: str, values: list[int]):
        self.index, self.gallery, self.kind = index, gallery, kind
        self.parameter_name, self.values = parameter_name, values
        self.parameter = values[0]
        self.recall: float | None = None
        self._set(self.parameter)

    @classmethod
    def build(cls, gallery, hnsw_up_to: int = HNSW_UP_TO) -> "ApproximateIndex":
        rows, width = gallery.shape
        if rows <= hnsw_up_to:
            index = faiss.IndexHNSWFlat(width, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            kind, parameter, values = "HNSW", "efSearch", _rising(16, max(rows, 16))
        else:
            lists = max(1, min(round(IVF_LISTS_PER_SQRT_ROWS * math.sqrt(rows)), rows // IVF_TRAINING_ROWS_PER_LIST))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(_training_sample(gallery, lists * IVF_TRAINING_ROWS_PER_LIST))
            kind, parameter, values = f"IVF ({lists} lists)", "nprobe", _rising(1, lists)
        for _, chunk in gallery_chunks(gallery, chunk_rows(width)):
            index.add(chunk)
        return cls(index, gallery, kind, parameter, values)

    def _set(self, value: int) -> None:
        faiss.ParameterSpace().set_index_parameter(self.index, self.parameter_name, value)

    def tune(self, sample_queries: np.ndarray) -> float:
        """Raise the search parameter until recall@10 against exact search on sample_queries reaches
        RECALL_TARGET (or the parameter is at its largest); print the measured recall; return it."""
        sample = np.ascontiguousarray(sample_queries, dtype=np.float32)
        depth = min(RECALL_AT, self.gallery.shape[0])
        exact = exact_top_k(sample, self.gallery, depth)[1]
        for value in self.values:
            self._set(value)
            self.parameter, self.recall = value, recall_at(exact, self.index.search(sample, depth)[1])
            if self.recall >= RECALL_TARGET:
                break
        console.print(f"approximate search: {self.kind}, {self.parameter_name} {self.parameter}: recall@{depth} "
                      f"{self.recall:.3f} against exact search on {len(sample)} sampled queries "
                      f"({self.gallery.shape[0]:,} gallery vectors)", soft_wrap=True)
        if self.recall < RECALL_TARGET:
            warn(f"the {self.kind} index stays below recall {RECALL_TARGET} at its largest {self.parameter_name}: "
                 f"searching exactly instead")
        return self.recall

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each (n_queries, min(k, gallery rows)), best first; exact for any
        query the index found fewer than k neighbours for, and for all when tuning fell short."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.gallery.shape[0])
        if self.recall is not None and self.recall < RECALL_TARGET:
            return exact_top_k(queries, self.gallery, k)
        similarities, indices = self.index.search(queries, k)
        short = np.flatnonzero((indices < 0).any(axis=1))
        if len(short):
            similarities[short], indices[short] = exact_top_k(queries[short], self.gallery, k)
        return similarities, indices


def recall_at(exact_indices: np.ndarray, found_indices: np.ndarray) -> float:
    """Share of the exact top-k neighbours that the approximate top-k found, over all queries."""
    hits = sum(len(np.intersect1d(want, got)) for want, got in zip(exact_indices, found_indices))
    return hits / max(exact_indices.size, 1)


def sample_rows(rows: int, count: int) -> np.ndarray:
    """count distinct row numbers (all when fewer), seeded, in increasing order."""
    if rows <= count:
        return np.arange(rows)
    return np.sort(np.random.default_rng(SEED).choice(rows, count, replace=False))


def _training_sample(gallery, count: int) -> np.ndarray:
    return np.ascontiguousarray(gallery[sample_rows(gallery.shape[0], count)], dtype=np.float32)


def _rising(first: int, last: int) -> list[int]:
    """first, about 1.5 times that, ... up to last: steps fine enough not to overshoot the target by far."""
    values = [first]
    while values[-1] < last:
        values.append(min(max(values[-1] + 1, round(values[-1] * 1.5)), last))
    return values
