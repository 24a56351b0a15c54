"""Speed of the embedding pipeline against the bare model, measured in one run.

    python benchmarks/embed_speed.py [--data ../shared/benchmarks/lfw-style] [--strategy cnn-zs] [--limit N]

1. bare model: the images are decoded and preprocessed into memory first, then only
   encoder.encode runs over them in batches, in this one process -> images/s of the model alone
   on one core (for face-zs: dlib's descriptor alone);
2. pipeline, cold cache: embed_images over the files (hashing, decoding in workers, the model;
   for an encoder that encodes in its workers, such as face-zs, the whole work in one process per
   core) -> images/s; the ratio pipeline / bare says how well the pipeline uses the machine;
3. pipeline, plain + mirrored (flip undecided, as a race's validation): both embeddings of each
   image from one decode -> images/s, against the bare model's two passes;
4. pipeline, warm cache: the same call again -> how much faster a second identical run is.
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
from toolkit.retrieval.embed import default_workers, embed_images, model_processes, usable_cores  # noqa: E402
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

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as both_cache:
        cold = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, cold cache")
        both = embed_images(encoder, paths, cache_dir=Path(both_cache), num_workers=arguments.workers,
                            mirrored_too=encoder.flippable, description="pipeline, plain + mirrored")
        warm = embed_images(encoder, paths, cache_dir=Path(cache), num_workers=arguments.workers,
                            description="pipeline, warm cache")
    pipeline_speed = len(paths) / cold.seconds
    where = (f"the model in {model_processes(arguments.workers)} worker processes" if encoder.encodes_in_workers
             else f"decoding in {arguments.workers if arguments.workers is not None else default_workers(encoder)} "
                  "workers, the model in this process")
    print(f"strategy {arguments.strategy} on {len(paths)} images of {competition.root} "
          f"(malloc tuning {'on' if TUNED else 'off'}; {usable_cores()} cores; {where})")
    print(f"bare model forward, one process:  {bare_speed:8.1f} images/s")
    print(f"pipeline (cold cache):            {pipeline_speed:8.1f} images/s   "
          f"ratio pipeline/bare = {pipeline_speed / bare_speed:.3f}")
    if encoder.flippable:
        both_speed = len(paths) / both.seconds
        print(f"pipeline, plain + mirrored:       {both_speed:8.1f} images/s   "
              f"ratio against the bare model's two passes = {2 * both_speed / bare_speed:.3f}")
    print(f"pipeline (warm cache):            {len(paths) / warm.seconds:8.1f} images/s   "
          f"second run {cold.seconds / warm.seconds:.1f}x faster ({cold.seconds:.1f}s -> {warm.seconds:.2f}s, "
          f"{warm.computed} re-embedded)")


if __name__ == "__main__":
    main()
