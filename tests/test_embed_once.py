"""Each image is decoded and preprocessed once per encoder in a race: validation's flip choice
costs one more model pass from the same preprocessed batch, never a second decode, and a second
race over the same cache embeds nothing. The counting encoders log every call to a file, since
their preprocess (and, for one of them, encode) runs in DataLoader worker processes."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from strategies.base import Fitted, WeightsStatus, fingerprint_of
from tests.racing import race
from tests.test_race_budget import PixelEncoder, PixelStrategy
from toolkit.data.dataset import find_competition
from toolkit.retrieval.embed import embed_images, file_digest, passes_to_compute


def _log(path: Path, line: str) -> None:
    with open(path, "a") as stream:         # one short append: whole lines from every process
        stream.write(line + "\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class CountingEncoder(PixelEncoder):
    """PixelEncoder that logs each preprocess (the image's content hash) and each encode (rows)."""

    def __init__(self, log: Path, in_workers: bool):
        super().__init__(width=24, seed=int(in_workers))
        self.log, self.encodes_in_workers = log, in_workers
        self.fingerprint = fingerprint_of("test-counting", in_workers, str(log))

    def preprocess(self, image):
        _log(self.log / "preprocess", hashlib.sha1(image.tobytes()).hexdigest())
        return super().preprocess(image)

    def encode(self, batch) -> np.ndarray:
        _log(self.log / "encode", str(len(batch)))
        return super().encode(batch)


class Counting(PixelStrategy):
    name = "test-counting"

    def __init__(self, log: Path, in_workers: bool):
        super().__init__(in_workers=in_workers)
        self.log, self.in_workers = log, in_workers

    def weights_status(self) -> WeightsStatus:
        return WeightsStatus(True, "no weights")

    def fit(self, training, context=None, deadline=None) -> Fitted:
        return Fitted(CountingEncoder(self.log, self.in_workers))


@pytest.fixture(scope="module")
def competition(synthetic_competition):
    return find_competition(synthetic_competition)


def test_a_race_with_flip_auto_preprocesses_each_image_once_and_a_second_race_nothing(competition, tmp_path):
    logs = {in_workers: tmp_path / f"log-{in_workers}" for in_workers in (False, True)}
    for folder in logs.values():
        folder.mkdir()
    strategies = lambda: [Counting(logs[False], False), Counting(logs[True], True)]  # noqa: E731
    options = dict(cache_dir=tmp_path / "cache", submissions_dir=tmp_path / "submissions", flip_tta=None,
                   num_workers=2, show_progress=False, ensemble_size=0)
    first = race(competition, strategies(), **options)
    assert [run.status for run in first.runs] == ["finished", "finished"]
    validation = list(dict.fromkeys(first.yardstick.choice_paths))
    test = list(competition.queries) + list(competition.gallery)
    images = validation + test
    distinct = {file_digest(path) for path in images}
    assert len(distinct) == len(images), "the generated images are all different (else counts below mislead)"
    for run in first.runs:
        log = logs[run.options["in_workers"]]
        calls = Counter(_lines(log / "preprocess"))
        assert sum(calls.values()) == len(images) and set(calls.values()) == {1}, \
            f"{run.label}: some image was preprocessed more than once"
        # validation: plain and mirrored of each image; the test: mirrored only when flip was chosen
        test_passes = 2 if run.flip_tta else 1
        assert sum(map(int, _lines(log / "encode"))) == 2 * len(validation) + test_passes * len(test)

    counts = {folder: (len(_lines(folder / "preprocess")), len(_lines(folder / "encode"))) for folder in logs.values()}
    second = race(competition, strategies(), **options)
    assert [run.status for run in second.runs] == ["finished", "finished"]
    assert {folder: (len(_lines(folder / "preprocess")), len(_lines(folder / "encode")))
            for folder in logs.values()} == counts, "the second race embedded something again"
    again = {run.label: run for run in second.runs}     # by label: cheaper estimates run first, so the order may differ
    for one, other in ((run, again[run.label]) for run in first.runs):
        assert one.validation.score == other.validation.score and one.flip_tta == other.flip_tta
        # a zero-shot estimate counts the model passes its encoder has not cached: all, then none
        # but the test's mirrored ones when validation chose plain (flip is undecided again)
        left = 0 if one.flip_tta else len(test)
        assert one.estimate > 0 and other.estimate == pytest.approx(left / Counting.images_per_second_cpu)


def test_flip_from_the_cached_sides_equals_flip_computed_at_once(competition, tmp_path):
    """mirrored_too caches both sides; flip TTA read back from them equals flip computed directly,
    in the workers or in the main process, and nothing is left to compute."""
    paths = list(competition.queries)[:40]
    for in_workers in (False, True):
        log = tmp_path / f"log-{in_workers}"
        log.mkdir()
        encoder = CountingEncoder(log, in_workers)
        direct = embed_images(encoder, paths, cache_dir=tmp_path / f"direct-{in_workers}", flip_tta=True,
                              num_workers=2, show_progress=False)
        cache = tmp_path / f"sides-{in_workers}"
        assert passes_to_compute(encoder, paths, cache, flip_tta=None) == 2 * len(paths)
        plain = embed_images(encoder, paths, cache_dir=cache, mirrored_too=True, num_workers=2, show_progress=False)
        assert passes_to_compute(encoder, paths, cache, flip_tta=None) == 0
        preprocessed = len(_lines(log / "preprocess"))
        flipped = embed_images(encoder, paths, cache_dir=cache, flip_tta=True, num_workers=2, show_progress=False)
        assert flipped.computed == 0 and len(_lines(log / "preprocess")) == preprocessed
        np.testing.assert_array_equal(flipped.vectors, direct.vectors)
        assert not np.allclose(plain.vectors, flipped.vectors)
