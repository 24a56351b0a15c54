"""Measure face-zs on the full lfw-style benchmark (a benchmark script, not toolkit code).

For each `upsample` setting: the fraction of queries / gallery images with no face found (the
centre-box fallback), images/s of `preprocess` alone (a Pool of 2 processes: the wall-clock rate
over both, and the rate of one process from the time spent inside preprocess) and of `encode`
alone (main process, batches of 32), and the competition score of plain cosine nearest-neighbour
retrieval: 600*Top1 + 300*Top5 + 100*Top10. With --flip also the score with flip TTA (mean of the
embeddings of the chip and its mirror, renormalised).

It reads answers.json, which is allowed here only because this is a measurement, never a racer.

    .venv/bin/python benchmarks/face_zs_check.py --upsample 0 1 [--flip] [--fallback 0.5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies import create_strategy  # noqa: E402
from strategies.base import l2_normalise  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "lfw-style"

_ENCODER = None


def _init_worker(encoder) -> None:
    global _ENCODER
    _ENCODER = encoder


def _preprocess(path: str):
    with Image.open(path) as image:
        image = image.convert("RGB")
        start = time.perf_counter()
        item = _ENCODER.preprocess(image)
        return item, time.perf_counter() - start


def preprocess_all(encoder, paths: list[Path]):
    start = time.perf_counter()
    with Pool(2, initializer=_init_worker, initargs=(encoder,)) as pool:
        results = pool.map(_preprocess, [str(path) for path in paths], chunksize=16)
    wall = time.perf_counter() - start
    items = [item for item, _ in results]
    inside = sum(seconds for _, seconds in results)
    return items, len(paths) / wall, len(paths) / inside


def encode_all(encoder, items, flip: bool = False):
    parts, parts_flipped = [], []
    start = time.perf_counter()
    for offset in range(0, len(items), encoder.batch_size):
        batch = encoder.collate(items[offset:offset + encoder.batch_size])
        parts.append(encoder.encode(batch))
        encoder.add_stats(encoder.batch_stats(batch))
    seconds = time.perf_counter() - start
    plain = np.concatenate(parts)
    if not flip:
        return plain, None, len(items) / seconds
    for offset in range(0, len(items), encoder.batch_size):
        batch = encoder.collate(items[offset:offset + encoder.batch_size])
        parts_flipped.append(encoder.encode(encoder.flip(batch)))
    flipped = l2_normalise(plain + np.concatenate(parts_flipped))
    return plain, flipped, len(items) / seconds


def score(query: np.ndarray, gallery: np.ndarray, query_ids: list[str], gallery_ids: list[str]):
    order = np.argsort(-(query @ gallery.T), axis=1, kind="stable")
    ranked = np.asarray(gallery_ids, dtype=object)[order]
    hits = ranked == np.asarray(query_ids, dtype=object)[:, None]
    top = {k: float(hits[:, :k].any(axis=1).mean()) for k in (1, 5, 10)}
    return 600 * top[1] + 300 * top[5] + 100 * top[10], top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--upsample", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fallback", type=float, default=None)
    parser.add_argument("--fallback-dy", type=float, default=None)
    parser.add_argument("--num-jitters", type=int, default=None)
    parser.add_argument("--flip", action="store_true", help="also score flip TTA")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()

    answers = json.loads((args.root / "answers.json").read_text())
    query_paths = sorted((args.root / "test" / "query").glob("*.jpg"))
    gallery_paths = sorted((args.root / "test" / "gallery").glob("*.jpg"))
    query_ids = [answers["query"][path.name] for path in query_paths]
    gallery_ids = [answers["gallery"][path.name] for path in gallery_paths]
    print(f"{len(query_paths)} queries, {len(gallery_paths)} gallery images", flush=True)

    rows = []
    for upsample in args.upsample:
        options = {"upsample": upsample}
        for key, value in (("fallback", args.fallback), ("fallback_dy", args.fallback_dy),
                           ("num_jitters", args.num_jitters)):
            if value is not None:
                options[key] = value
        strategy = create_strategy("face-zs", **options)
        encoder = strategy.fit([]).encoder
        items, pre_wall, pre_one = preprocess_all(encoder, query_paths + gallery_paths)
        query_items, gallery_items = items[:len(query_paths)], items[len(query_paths):]
        query_missed = sum(not found for _, found in query_items)
        gallery_missed = sum(not found for _, found in gallery_items)
        embeddings, flipped, enc_rate = encode_all(encoder, items, flip=args.flip)
        assert encoder.faces_missed == query_missed + gallery_missed
        value, top = score(embeddings[:len(query_paths)], embeddings[len(query_paths):],
                           query_ids, gallery_ids)
        row = {"strategy": strategy.describe(), "upsample": upsample,
               "query_missed": query_missed, "gallery_missed": gallery_missed,
               "preprocess_ips_pool2": pre_wall, "preprocess_ips_one": pre_one,
               "encode_ips": enc_rate, "score": value, "top": top}
        if flipped is not None:
            row["score_flip"], row["top_flip"] = score(
                flipped[:len(query_paths)], flipped[len(query_paths):], query_ids, gallery_ids)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| setting | no face: queries | no face: gallery | preprocess img/s (pool of 2 / one "
          "process) | encode img/s | Top1 / Top5 / Top10 | score |" + (" score flip TTA |" if args.flip else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if args.flip else ""))
    for row in rows:
        top = row["top"]
        line = (f"| {row['strategy']} | {row['query_missed']}/{len(query_paths)} "
                f"({row['query_missed'] / len(query_paths):.1%}) | {row['gallery_missed']}/"
                f"{len(gallery_paths)} ({row['gallery_missed'] / len(gallery_paths):.1%}) | "
                f"{row['preprocess_ips_pool2']:.0f} / {row['preprocess_ips_one']:.0f} | "
                f"{row['encode_ips']:.1f} | {top[1]:.3f} / {top[5]:.3f} / {top[10]:.3f} | "
                f"{row['score']:.0f} |")
        if "score_flip" in row:
            line += f" {row['score_flip']:.0f} |"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
