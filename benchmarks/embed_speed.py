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

from toolkit.machine.cpu_memory import keep_freed_memory_for_reuse  # noqa: E402

TUNED = keep_freed_memory_for_reuse()  # as `invoke race` does; both measurements below share it

from strategies import create_strategy, parse_strategy_specs  # noqa: E402
from toolkit.data.dataset import find_competition  # noqa: E402
from toolkit.retrieval.embed import embed_images  # noqa: E402
from toolkit.data.images import load_rgb  # noqa: E402


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
    encoder = create_strategy(name, **options).fit([]).encoder

    # batches collated up front, as the loader hands them over; only encode is timed
    batches = [encoder.collate([encoder.preprocess(load_rgb(path)) for path in paths[start:start + encoder.batch_size]])
               for start in range(0, len(paths), encoder.batch_size)]
    encoder.encode(batches[0])  # warm-up, as the pipeline's first batch is
    batches.reverse()
    started = time.perf_counter()
    while batches:  # each batch freed once encoded, as the loader's are
        encoder.encode(batches.pop())
    bare_speed = len(paths) / (time.perf_counter() - started)

    model_seconds = [0.0]
    bare_encode = encoder.encode

    def timed_encode(batch):
        started = time.perf_counter()
        try:
            return bare_encode(batch)
        finally:
            model_seconds[0] += time.perf_counter() - started

    encoder.encode = timed_encode
    with tempfile.TemporaryDirectory() as cache:
        cold = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, cold cache")
        warm = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, warm cache")
    pipeline_speed = len(paths) / cold.seconds
    print(f"strategy {arguments.strategy} on {len(paths)} images of {competition.root} "
          f"(malloc tuning {'on' if TUNED else 'off'})")
    print(f"bare model forward:     {bare_speed:8.1f} images/s")
    print(f"pipeline (cold cache):  {pipeline_speed:8.1f} images/s   ratio pipeline/bare = {pipeline_speed / bare_speed:.3f}")
    print(f"  of which the model:   {model_seconds[0]:8.1f} s of {cold.seconds:.1f} s "
          f"({cold.computed} images embedded)")
    print(f"pipeline (warm cache):  {len(paths) / warm.seconds:8.1f} images/s   "
          f"second run {cold.seconds / warm.seconds:.1f}x faster ({cold.seconds:.1f}s -> {warm.seconds:.2f}s, "
          f"{warm.computed} re-embedded)")


if __name__ == "__main__":
    main()
