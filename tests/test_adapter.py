"""strategies/adapter.py: a projection trained on a zero-shot base's cached embeddings."""
from __future__ import annotations

import copy
import json
import pickle
import time

import numpy as np
import pytest
import torch

from strategies import create_strategy, strategy_names
from strategies.base import DerivedEncoder, RaceContext
from strategies.trained.adapter import Adapter, AdapterEncoder
from toolkit.data.dataset import find_competition
from toolkit.retrieval.embed import embed_images
from toolkit.data.images import load_rgb
from toolkit.data.synthetic import make_synthetic_competition
from toolkit.models.faces import weights_status as face_weights_status


@pytest.fixture(scope="module")
def base(tiny_clip_model):
    """A tiny open_clip ViT with random weights (32-D, fast): a weak base an adapter can improve."""
    return {"base": "clip-zs", "base_options": {"model": tiny_clip_model, "pretrained": None}}


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """40 training identities (3 photos + 3 renderings each): enough for an inner validation split."""
    root = make_synthetic_competition(tmp_path_factory.mktemp("adapter") / "competition", training_identities=40,
                                      test_identities=4, photos_per_identity=3, distractors=2, size=64)
    return find_competition(root)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapter-cache")


def make_adapter(base, **options) -> Adapter:
    return create_strategy("adapter", **{**base, "held_out_fraction": 0.3, **options})


def quiet(cache_dir, **fields) -> RaceContext:
    """What a race would tell the adapter: its cache, no workers, no progress bars."""
    return RaceContext(cache_dir=cache_dir, num_workers=0, show_progress=False, **fields)


@pytest.fixture(scope="module")
def fitted(base, competition, cache_dir):
    adapter = make_adapter(base, loss="supcon", steps=200)
    started = time.monotonic()
    deadline = started + 120
    fit = adapter.fit(competition.training, quiet(cache_dir), deadline)
    return fit.details, fit.encoder, time.monotonic() - started, deadline


def test_registered_and_options_checked():
    assert "adapter" in strategy_names()
    adapter = create_strategy("adapter", base="cnn-zs[pretrained=false,image_size=64]", loss="triplet")
    assert (adapter.base_name, adapter.base_options) == ("cnn-zs", {"pretrained": False, "image_size": 64})
    adapter = create_strategy("adapter", base="cnn-zs", base_options="pretrained=false;image_size=64")
    assert adapter.base_options == {"pretrained": False, "image_size": 64}
    assert create_strategy("adapter").base_name == "face-zs"
    with pytest.raises(ValueError, match="no option"):
        create_strategy("adapter", epochs=3)
    with pytest.raises(ValueError, match="loss"):
        create_strategy("adapter", loss="hinge")
    with pytest.raises(ValueError, match="mix"):
        create_strategy("adapter", mix=1.5)


def test_trains_within_its_deadline_and_beats_its_base_on_inner_validation(fitted):
    report, encoder, _, _ = fitted
    assert report["stopped_by"] == "steps" and report["steps"] == 200     # all its steps, before its deadline
    # random-weight tiny ViT features, 28 fit identities: the base is weak and training lifts it
    assert 300 < report["base_score"] < 800
    assert report["score"] >= report["base_score"] + 60
    assert report["scores_by_mix"][0.0] == pytest.approx(report["base_score"])  # mix 0 is the base
    assert isinstance(encoder, AdapterEncoder) and isinstance(encoder, DerivedEncoder)


@pytest.mark.skipif(not face_weights_status().available_offline, reason="face-zs needs dlib and its models")
def test_the_default_arcface_over_face_zs_beats_its_base(competition, cache_dir):
    fit = create_strategy("adapter", held_out_fraction=0.3).fit(competition.training, quiet(cache_dir))
    assert fit.details["fit_identities"] == 28 and "arcface" in fit.report
    assert fit.details["score"] > fit.details["base_score"]   # measured 733.3 -> 761.1


def test_stops_at_the_deadline(base, competition, cache_dir, fitted):
    adapter = make_adapter(base, steps=1_000_000)
    started = time.monotonic()
    report = adapter.fit(competition.training, quiet(cache_dir), started + 3.0).details  # embeddings cached by now
    assert report["stopped_by"] == "deadline"
    assert 0 < report["steps"] < 1_000_000


@pytest.mark.parametrize("options", [{"loss": "triplet"}, {"loss": "contrastive"}, {"loss": "arcface"},
                                     {"hidden": 64, "mix": 0.5}, {"out_dim": 16}])
def test_every_loss_and_shape_trains(base, competition, cache_dir, fitted, options):
    fit = make_adapter(base, steps=40, evaluate_every=20, **options).fit(competition.training, quiet(cache_dir))
    encoder = fit.encoder
    if "out_dim" not in options:  # a same-width adapter starts as the identity: never worse than its base
        assert fit.details["score"] >= fit.details["base_score"]
    vectors = encoder.project(np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32))
    assert vectors.shape == (5, options.get("out_dim", 32)) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_derived_embeddings_come_from_the_base_cache(fitted, competition, cache_dir):
    _, encoder, _, _ = fitted
    options = {"cache_dir": cache_dir, "num_workers": 0, "show_progress": False}
    training_paths = [item.path for item in competition.training]
    warm = embed_images(encoder, training_paths, **options)   # fit() embedded these with the base
    assert warm.computed == 0 and warm.from_cache == len(training_paths)
    test_paths = list(competition.queries) + list(competition.gallery)
    first = embed_images(encoder, test_paths, **options)
    second = embed_images(encoder, test_paths, **options)
    assert first.computed == len(test_paths) and second.computed == 0
    assert np.array_equal(first.vectors, second.vectors)
    base = embed_images(encoder.base, test_paths, **options)
    assert base.computed == 0
    assert np.allclose(first.vectors, encoder.project(base.vectors), atol=1e-6)
    # the encoder's own batch path agrees with the cached path
    batch = encoder.collate([encoder.preprocess(load_rgb(path)) for path in test_paths[:3]])
    assert np.allclose(encoder.encode(batch), first.vectors[:3], atol=1e-4)
    flipped = embed_images(encoder, test_paths[:3], flip_tta=True, **options)
    assert flipped.vectors.shape == first.vectors[:3].shape and encoder.flippable


def test_fingerprint_follows_the_weights_and_the_encoder_pickles(fitted):
    _, encoder, _, _ = fitted
    same = AdapterEncoder(encoder.base, copy.deepcopy(encoder.projection))
    assert same.fingerprint == encoder.fingerprint
    changed = copy.deepcopy(encoder.projection)
    with torch.no_grad():
        changed.linear.bias.add_(1e-3)
    assert AdapterEncoder(encoder.base, changed).fingerprint != encoder.fingerprint
    assert encoder.fingerprint != encoder.base.fingerprint

    restored = pickle.loads(pickle.dumps(encoder))   # what DataLoader workers receive
    vectors = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    assert np.array_equal(restored.project(vectors), encoder.project(vectors))
    assert restored.fingerprint == encoder.fingerprint


def test_same_seed_same_adapter(base, competition, cache_dir, fitted):
    first = make_adapter(base, steps=20, evaluate_every=10).fit(competition.training, quiet(cache_dir)).encoder
    second = make_adapter(base, steps=20, evaluate_every=10).fit(competition.training, quiet(cache_dir)).encoder
    assert first.fingerprint == second.fingerprint


def test_the_race_runs_an_adapter(base, competition, cache_dir, fitted, tmp_path, monkeypatch):
    from toolkit.retrieval.metrics import score_submission
    from tests.racing import race

    monkeypatch.setenv("RETRIEVAL_RACE_CACHE", str(cache_dir.parent))  # if the race left the cache unsaid
    result = race(competition, [("adapter", {**base, "steps": 40, "held_out_fraction": 0.3})],
                      submissions_dir=tmp_path / "submissions", cache_dir=cache_dir, num_workers=0,
                      show_progress=False, flip_tta=False, post_process=False)
    run = result.runs[0]
    assert run.status == "finished", run.reason
    answers = json.loads((competition.root / "answers.json").read_text())
    submission = json.loads(run.submission.read_text())
    assert score_submission(submission, answers).queries == len(competition.queries)


def test_derived_embeddings_keep_the_base_problems(fitted, competition, cache_dir, tmp_path):
    _, encoder, _, _ = fitted
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(competition.queries[0].read_bytes()[:100])
    result = embed_images(encoder, [competition.queries[0], broken], cache_dir=cache_dir, num_workers=0,
                          show_progress=False)
    assert list(result.problems) == [1] and result.vectors.shape == (2, 32)
    assert result.readable_mask.tolist() == [True, False]


def test_estimate_leaves_out_what_the_base_has_cached(base, competition, tmp_path):
    cache_dir = tmp_path / "fresh-cache"
    adapter = make_adapter(base, steps=10)
    pending = tuple(competition.queries) + tuple(competition.gallery)
    context = quiet(cache_dir, pending_images=pending, images_after_fit=len(pending))
    cold = adapter.estimate(competition.training, context)
    after_cold = adapter.estimate_seconds(len(pending), context)
    embed_images(adapter.base_encoder(), pending, cache_dir=cache_dir, num_workers=0, show_progress=False)
    warm = adapter.estimate(competition.training, context)
    assert warm < cold
    # flip is undecided in this context: the mirrored passes are still to come, and only they
    assert adapter.estimate_seconds(len(pending), context) == after_cold / 2 > 0
    embed_images(adapter.base_encoder(), pending, cache_dir=cache_dir, mirrored_too=True, num_workers=0,
                 show_progress=False)
    assert adapter.estimate_seconds(len(pending), context) == 0.0


def test_an_estimate_of_several_fits_counts_the_base_embedding_once(base, competition, tmp_path):
    adapter = make_adapter(base, steps=500)
    paths = tuple(competition.queries) + tuple(competition.gallery)        # what the race embeds after
    once = adapter.estimate(competition.training, quiet(tmp_path, pending_images=paths))
    thrice = adapter.estimate(competition.training, quiet(tmp_path, pending_images=paths, fits=3))
    # none cached: the training images plain, what the race embeds plain and mirrored (flip undecided)
    embedding = adapter.base_strategy().estimate_seconds(len(competition.training) + 2 * len(paths))
    assert embedding > 0 and once > embedding
    assert thrice - once == pytest.approx(2 * (once - embedding))          # the steps, twice more
    assert thrice < 3 * once
