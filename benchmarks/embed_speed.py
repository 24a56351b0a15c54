"""Speed of the embedding pipeline against the bare model, measured in one run.

    python benchmarks/embed_speed.py [--data ../shared/benchmarks/lfw-style] [--strategy cnn-zs] [--limit N]

1. bare model: the images are decoded and preprocessed into memory first, then only
   encoder.encode runs over them in batches -> images/s of the model alone;
2. pipeline, cold cache: embed_images over the files (hashing, decoding in workers, the model)
   -> images/s; the ratio pipeline / bare says how well decoding is hidden behind the model;
3. pipeline, warm cache: the same call again -> how much faster a second identical run is.
Not a timed test: it prints numbers for a person to read.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from strategies import create_strategy, parse_strategy_specs  # noqa: E402
from toolkit.dataset import find_competition  # noqa: E402
from toolkit.embed import embed_images  # noqa: E402
from toolkit.images import load_rgb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "benchmarks" / "lfw-style"))
    parser.add_argument("--strategy", default="cnn-zs")
    parser.add_argument("--limit", type=int, default=1024, help="images used (test query+gallery first)")
    parser.add_argument("--workers", type=int, default=None)
    arguments = parser.parse_args()

    competition = find_competition(arguments.data)
    paths = (list(competition.queries) + list(competition.gallery) + [item.path for item in competition.training])
    paths = paths[:arguments.limit]
    [(name, options)] = parse_strategy_specs(arguments.strategy)
    encoder = create_strategy(name, **options).fit([])

    items = [encoder.preprocess(load_rgb(path)) for path in paths]
    started = time.perf_counter()
    for start in range(0, len(items), encoder.batch_size):
        encoder.encode(encoder.collate(items[start:start + encoder.batch_size]))
    bare_speed = len(items) / (time.perf_counter() - started)
    del items

    with tempfile.TemporaryDirectory() as cache:
        cold = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, cold cache")
        warm = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, warm cache")
    pipeline_speed = len(paths) / cold.seconds
    print(f"strategy {arguments.strategy} on {len(paths)} images of {competition.root}")
    print(f"bare model forward:     {bare_speed:8.1f} images/s")
    print(f"pipeline (cold cache):  {pipeline_speed:8.1f} images/s   ratio pipeline/bare = {pipeline_speed / bare_speed:.3f}")
    print(f"pipeline (warm cache):  {len(paths) / warm.seconds:8.1f} images/s   "
          f"second run {cold.seconds / warm.seconds:.1f}x faster ({cold.seconds:.1f}s -> {warm.seconds:.2f}s, "
          f"{warm.computed} re-embedded)")


if __name__ == "__main__":
    main()
