"""Measure face-zs's detector cascade on the lfw-style test set (a benchmark script, not a test).

(1) Detection: how many of the test queries + gallery images HOG misses (face-zs's default), how
many of those dlib's CNN face detector finds, and seconds per image of each detector. (2) Score:
plain cosine nearest neighbours (toolkit.retrieval.metrics) with face-zs's default and with
detector=hog+cnn. The default's embeddings come from the embedding cache; the cascade's are the
default's where HOG found the face (checked byte for byte on a sample) and computed for the rest.

It reads answers.json, which is allowed here only because this is a measurement, never a racer.

    RETRIEVAL_RACE_CACHE=/work/scratch/cache .venv/bin/python benchmarks/face_detector_cascade.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from strategies import create_strategy  # noqa: E402
from toolkit.data.images import load_rgb  # noqa: E402
from toolkit.models import faces  # noqa: E402
from toolkit.retrieval.embed import embed_images  # noqa: E402
from toolkit.retrieval.metrics import load_answers, score_rankings  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "lfw-style"


def nearest_neighbour_score(vectors: np.ndarray, query_count: int, query_ids, gallery_ids):
    query, gallery = vectors[:query_count], vectors[query_count:]
    order = np.argsort(-(query @ gallery.T), axis=1, kind="stable")[:, :10]
    ranked = np.asarray(gallery_ids, dtype=object)[order].tolist()
    return score_rankings(ranked, query_ids, gallery_ids)


def overlap(box, other) -> float:
    """Intersection over union of a dlib.rectangle and a (left, top, right, bottom) tuple."""
    left, top = max(box.left(), other[0]), max(box.top(), other[1])
    right, bottom = min(box.right(), other[2]), min(box.bottom(), other[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = box.width() * box.height() + (other[2] - other[0]) * (other[3] - other[1]) - inter
    return inter / union if union else 0.0


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--check", type=int, default=64,
                        help="HOG-found images whose cascade embedding is checked against the default's")
    args = parser.parse_args()

    answers = load_answers(args.root / "answers.json")
    query_paths = sorted((args.root / "test" / "query").glob("*.jpg"))
    gallery_paths = sorted((args.root / "test" / "gallery").glob("*.jpg"))
    paths = query_paths + gallery_paths
    query_ids = [answers["query"][path.name] for path in query_paths]
    gallery_ids = [answers["gallery"][path.name] for path in gallery_paths]
    print(f"{len(query_paths)} queries, {len(gallery_paths)} gallery images", flush=True)

    # (1) Detection, one process, as face-zs runs each detector (HOG at full size, upsample 0).
    hog_seconds, missed = 0.0, []
    for index, path in enumerate(paths):
        rgb = faces.rgb_array(load_rgb(path))
        (_, found_by), seconds = timed(faces.first_face, rgb, ("hog",))
        hog_seconds += seconds
        if found_by is None:
            missed.append(index)
    cnn_seconds, rescued, overlaps = 0.0, [], []
    for index in missed:
        rgb = faces.rgb_array(load_rgb(paths[index]))
        (box, found_by), seconds = timed(faces.first_face, rgb, ("cnn",))
        cnn_seconds += seconds
        if found_by == "cnn":
            rescued.append(index)
            overlaps.append(overlap(box, faces.centre_box(rgb.shape[0], rgb.shape[1], 0.45)))
    missed_queries = sum(index < len(query_paths) for index in missed)
    rescued_queries = sum(index < len(query_paths) for index in rescued)
    print(f"HOG misses {len(missed)} of {len(paths)} ({missed_queries} queries, "
          f"{len(missed) - missed_queries} gallery); {hog_seconds / len(paths):.4f} s per image")
    print(f"CNN finds a face in {len(rescued)} of those {len(missed)} ({rescued_queries} queries, "
          f"{len(rescued) - rescued_queries} gallery); {cnn_seconds / max(1, len(missed)):.3f} s per image "
          f"(over all {len(missed)} misses)")
    if overlaps:
        print(f"the CNN's boxes overlap face-zs's centre box by IoU {np.median(overlaps):.2f} (median), "
              f"{min(overlaps):.2f} at least", flush=True)

    # (2) Score of plain nearest neighbours, default vs cascade.
    default = create_strategy("face-zs").fit([]).encoder
    cascade = create_strategy("face-zs", detector="hog+cnn").fit([]).encoder
    plain = embed_images(default, paths, description="face-zs (cache)", show_progress=False)
    print(f"default embeddings: {plain.from_cache} from the cache, {plain.computed} computed", flush=True)
    vectors = plain.vectors.copy()
    found = np.setdiff1d(np.arange(len(paths)), missed)
    sample = np.random.default_rng(0).choice(found, size=min(args.check, len(found)), replace=False)
    redo = sorted(set(missed) | set(sample.tolist()))
    for offset in range(0, len(redo), cascade.batch_size):
        rows = redo[offset:offset + cascade.batch_size]
        items = [cascade.preprocess(load_rgb(paths[row])) for row in rows]
        for row, vector in zip(rows, cascade.encode(cascade.collate(items))):
            if row in missed:
                vectors[row] = vector
            elif not np.array_equal(vector, plain.vectors[row]):
                raise SystemExit(f"{paths[row].name}: HOG found its face, yet the cascade embeds it differently")
    print(f"cascade: {cascade.report()} (of the misses, plus {len(sample)} HOG images checked identical)")
    # Rescued gallery images: mean cosine to the queries of their identity, centre box vs CNN face.
    queries, query_labels = plain.vectors[:len(query_paths)], np.asarray(query_ids, dtype=object)
    cosines = []
    for row in rescued:
        same = queries[query_labels == gallery_ids[row - len(query_paths)]] if row >= len(query_paths) else []
        if len(same):
            cosines.append((float(np.mean(same @ plain.vectors[row])), float(np.mean(same @ vectors[row]))))
    if cosines:
        centre, cnn = np.mean(cosines, axis=0)
        print(f"{len(cosines)} rescued gallery images with queries of their identity: mean cosine to them "
              f"{centre:.3f} with the centre box, {cnn:.3f} with the CNN's face")
    before = nearest_neighbour_score(plain.vectors, len(query_paths), query_ids, gallery_ids)
    after = nearest_neighbour_score(vectors, len(query_paths), query_ids, gallery_ids)
    print()
    print("| face-zs | Top1 / Top5 / Top10 | mAP@10 | score |")
    print("|---|---|---|---|")
    for label, result in (("detector=hog (default)", before), ("detector=hog+cnn", after)):
        print(f"| {label} | {result.top1:.3f} / {result.top5:.3f} / {result.top10:.3f} | "
              f"{result.map_at_10:.3f} | {result.score:.1f} |")
    print(f"score change: {after.score - before.score:+.1f}")


if __name__ == "__main__":
    main()
