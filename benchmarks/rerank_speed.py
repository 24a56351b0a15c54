"""k-reciprocal re-ranking speed and memory on synthetic clustered embeddings.

    python benchmarks/rerank_speed.py [--sizes 1500 10000] [--width 128]

For each size N: N queries x N gallery, 128-D (dlib's descriptor width) clustered vectors,
k1=20, k2=6, lambda=0.3. Prints seconds and the process's peak resident memory. Not a timed test.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies.base import l2_normalise  # noqa: E402
from toolkit.retrieval.rerank import k_reciprocal_distance  # noqa: E402


def clustered(rng, rows, centres):
    picks = rng.integers(0, len(centres), rows)
    return l2_normalise(centres[picks] + 0.5 * rng.normal(size=(rows, centres.shape[1])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1500, 10000])
    parser.add_argument("--width", type=int, default=128)
    arguments = parser.parse_args()
    rng = np.random.default_rng(0)
    for size in arguments.sizes:
        centres = l2_normalise(rng.normal(size=(max(10, size // 8), arguments.width)))
        query, gallery = clustered(rng, size, centres), clustered(rng, size, centres)
        started = time.perf_counter()
        distance = k_reciprocal_distance(query, gallery, k1=20, k2=6, lambda_value=0.3)
        seconds = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{size:>6} x {size:<6} k-reciprocal: {seconds:7.2f} s, output {distance.nbytes / 2**20:7.1f} MiB, "
              f"peak resident memory so far {peak_mib:8.0f} MiB")


if __name__ == "__main__":
    main()
