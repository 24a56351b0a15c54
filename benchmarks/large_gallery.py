"""Search over a large gallery: build time, queries/s, recall@10 against exact search, peak memory.

    python benchmarks/large_gallery.py [--gallery 1000000] [--queries 10000] [--width 512]
                                       [--identities 4000] [--index auto|hnsw|ivf] [--folder /tmp]

The gallery is generated straight into a .npy memmap on disk (deleted at the end) and searched from
there; it is clustered like real embeddings (Embeddings): identities of uneven size, each a centre
with its own spread over a few sessions, per-photo noise and a low-rank component all rows share,
L2-normalised. The queries are new photos of the same sessions and
identities. Steps: build the approximate index (ApproximateIndex.build), tune it on a query sample
(prints the recall it measured), answer every query (timed), then the exact chunked search of every
query (exact_top_k) for recall@10. Not a timed test: it prints numbers for a person to read.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.retrieval.approximate_index import (HNSW_UP_TO, RECALL_SAMPLE, ApproximateIndex,  # noqa: E402
                                                 recall_at, sample_rows)
from toolkit.retrieval.exact_search import exact_top_k  # noqa: E402

SHARED_RANK = 16
SHARED_NORM = 0.3
PHOTO_NOISE = 0.5
GENERATION_ROWS = 65_536


class Embeddings:
    """Draws of clustered, L2-normalised embeddings like a face model's: identities of uneven size,
    each a centre with its own spread over a few sessions (photos of one sitting are near-duplicates),
    per-photo noise, and a low-rank component every row shares (lighting, camera)."""

    def __init__(self, rng, identities: int, width: int):
        self.rng, self.width = rng, width
        centres = _unit(rng.standard_normal((identities, width), dtype=np.float32))
        sessions_per_identity = 1 + rng.poisson(3, identities)
        self.identity = np.repeat(np.arange(identities), sessions_per_identity)
        spread = rng.uniform(0.4, 0.7, identities).astype(np.float32)[self.identity]
        self.sessions = centres[self.identity] + rng.standard_normal(
            (len(self.identity), width), dtype=np.float32) * (spread / np.sqrt(width))[:, None]
        self.shared = (rng.standard_normal((SHARED_RANK, width), dtype=np.float32)
                       * np.float32(SHARED_NORM / np.sqrt(SHARED_RANK * width)))
        sizes = (1.0 / np.arange(1, identities + 1) ** 0.5)[rng.permutation(identities)]  # uneven identity sizes
        weights = sizes[self.identity] / sessions_per_identity[self.identity]
        self.weights = weights / weights.sum()

    def draw(self, rows: int) -> np.ndarray:
        session = self.rng.choice(len(self.sessions), rows, p=self.weights)
        noise = (self.rng.standard_normal((rows, self.width), dtype=np.float32)
                 * np.float32(PHOTO_NOISE / np.sqrt(self.width)))
        shared = self.rng.standard_normal((rows, SHARED_RANK), dtype=np.float32) @ self.shared
        return _unit(self.sessions[session] + noise + shared)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def peak_memory_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--identities", type=int, default=4000)
    parser.add_argument("--index", choices=["auto", "hnsw", "ivf"], default="auto",
                        help="auto: chosen by the gallery's size, as top_k does")
    parser.add_argument("--folder", default="/tmp")
    arguments = parser.parse_args()
    embeddings = Embeddings(np.random.default_rng(0), arguments.identities, arguments.width)
    with tempfile.TemporaryDirectory(dir=arguments.folder, prefix="large-gallery-") as folder:
        path = Path(folder) / "gallery.npy"
        started = time.perf_counter()
        on_disk = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                            shape=(arguments.gallery, arguments.width))
        for start in range(0, arguments.gallery, GENERATION_ROWS):
            stop = min(start + GENERATION_ROWS, arguments.gallery)
            on_disk[start:stop] = embeddings.draw(stop - start)
        on_disk.flush()
        del on_disk
        queries = embeddings.draw(arguments.queries)
        size_gib = path.stat().st_size / 2**30
        print(f"generated {arguments.gallery:,} x {arguments.width} gallery on disk ({size_gib:.2f} GiB) "
              f"and {arguments.queries:,} queries, {arguments.identities:,} identities: "
              f"{time.perf_counter() - started:.1f} s")
        gallery = np.load(path, mmap_mode="r")

        started = time.perf_counter()
        hnsw_up_to = {"auto": HNSW_UP_TO, "hnsw": arguments.gallery, "ivf": 0}[arguments.index]
        index = ApproximateIndex.build(gallery, hnsw_up_to=hnsw_up_to)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        index.tune(queries[sample_rows(len(queries), RECALL_SAMPLE)])
        tune_seconds = time.perf_counter() - started
        print(f"index: {index.kind}, built in {build_seconds:.1f} s; tuned ({index.parameter_name} "
              f"{index.parameter}) in {tune_seconds:.1f} s")

        started = time.perf_counter()
        _, found = index.search(queries, 10)
        search_seconds = time.perf_counter() - started
        print(f"approximate search: {len(queries):,} queries in {search_seconds:.2f} s "
              f"({len(queries) / search_seconds:,.0f} queries/s)")

        started = time.perf_counter()
        _, exact = exact_top_k(queries, gallery, 10)
        exact_seconds = time.perf_counter() - started
        print(f"exact chunked search: {len(queries):,} queries in {exact_seconds:.1f} s "
              f"({len(queries) / exact_seconds:,.0f} queries/s)")
        print(f"recall@10 against exact over all {len(queries):,} queries: {recall_at(exact, found):.4f}")
        print(f"peak resident memory (ru_maxrss): {peak_memory_gib():.2f} GiB")
        del gallery


if __name__ == "__main__":
    main()
