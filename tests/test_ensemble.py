"""Ensembles: the fused similarity is the weighted mean of the members' similarities (members of
any width), the weight grid and search, and the ensemble as a run of its own in a race, built from
each member's embeddings with the flip setting that member chose."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from strategies.base import Encoder, Fitted, Strategy, WeightsStatus, fingerprint_of, l2_normalise
from toolkit.data.dataset import find_competition
from toolkit.retrieval.embed import Embeddings, embed_images
from toolkit.retrieval.ensemble import (cross_fitted_score, ensemble_label, fuse, fuse_embeddings, held_out_parts,
                                        search_weights, simplex_grid)
from toolkit.data.images import load_rgb
from toolkit.records.store import Leaderboard
from tests.racing import race
from toolkit.views.race import race_table
from toolkit.retrieval.recipes import PLAIN, candidate_recipes, ranked_indices, score_recipes
from toolkit.submit.submission import build_submission, load_submission, validate_submission


def _unit_rows(rng, rows, width):
    return l2_normalise(rng.standard_normal((rows, width)))


def test_the_fused_similarity_is_the_weighted_mean_of_the_members_similarities():
    rng = np.random.default_rng(0)
    widths, weights = (8, 5, 3), (2.0, 1.0, 0.5)            # members of different widths; weights not summing to 1
    queries = [_unit_rows(rng, 7, width) for width in widths]
    gallery = [_unit_rows(rng, 11, width) for width in widths]
    fused_queries, fused_gallery = fuse(queries, weights), fuse(gallery, weights)
    assert fused_queries.shape == (7, 16) and fused_queries.dtype == np.float32
    expected = sum(w * q @ g.T for w, q, g in zip(weights, queries, gallery)) / sum(weights)
    np.testing.assert_allclose(fused_queries @ fused_gallery.T, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(fused_gallery, axis=1), 1.0, atol=1e-6)


def test_members_are_normalised_before_fusing_and_bad_weights_are_refused():
    rng = np.random.default_rng(1)
    raw = [rng.standard_normal((4, 6)) * 5, rng.standard_normal((4, 2)) * 0.1]
    fused = fuse(raw, (0.5, 0.5))
    expected = 0.5 * l2_normalise(raw[0]) @ l2_normalise(raw[0]).T + 0.5 * l2_normalise(raw[1]) @ l2_normalise(raw[1]).T
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-6)
    for bad in ((1.0,), (-1.0, 2.0), (0.0, 0.0)):
        with pytest.raises(ValueError, match="weight"):
            fuse(raw, bad)


def test_fused_embeddings_drop_a_file_unreadable_for_any_member():
    rng = np.random.default_rng(2)
    paths = [f"{index}.jpg" for index in range(3)]
    first = Embeddings(paths=paths, vectors=_unit_rows(rng, 3, 4), problems={1: "truncated"})
    second = Embeddings(paths=paths, vectors=_unit_rows(rng, 3, 6), problems={2: "not an image"})
    fused = fuse_embeddings([first, second], (0.3, 0.7))
    assert fused.vectors.shape == (3, 10) and fused.problems == {1: "truncated", 2: "not an image"}


@pytest.mark.parametrize("members, points", [(2, 9), (3, 63), (4, 282)])
def test_the_simplex_grid_has_two_or_more_members_weighted_and_sums_to_one(members, points):
    grid = simplex_grid(members)
    assert len(grid) == points == len(set(grid))
    for weights in grid:
        assert len(weights) == members and sum(weights) == pytest.approx(1.0)
        assert sum(weight > 0 for weight in weights) >= 2 and min(weights) >= 0


def test_the_weight_search_finds_the_mix_that_beats_each_member():
    # four identities; member A cannot tell 0 from 1, member B cannot tell 2 from 3: together they can
    labels = [0, 1, 2, 3]
    a_rows = {0: [1, 0, 0], 1: [1, 0, 0], 2: [0, 1, 0], 3: [0, 0, 1]}
    b_rows = {0: [1, 0, 0], 1: [0, 1, 0], 2: [0, 0, 1], 3: [0, 0, 1]}
    a = l2_normalise(np.array([a_rows[label] for label in labels], dtype=np.float32))
    b = l2_normalise(np.array([b_rows[label] for label in labels], dtype=np.float32))
    alone = [search_weights([[(x, x)], [(x, x)]], [(labels, labels)]).score.top1 for x in (a, b)]
    found = search_weights([[(a, a)], [(b, b)]], [(labels, labels)], k=1)
    assert max(alone) < 1.0 and found.score.top1 == 1.0 and found.complete and found.tried == 9
    assert 0 < found.weights[0] < 1 and sum(found.weights) == pytest.approx(1.0)


def _noise_fold(generator, identities: int, queries_each: int, width: int = 8):
    """A fold of pure noise: labels carry no signal, so any score above chance is luck."""
    query_labels = [identity for identity in range(identities) for _ in range(queries_each)]
    gallery_labels = list(range(identities)) * 2
    return (l2_normalise(generator.normal(size=(len(query_labels), width)).astype(np.float32)),
            l2_normalise(generator.normal(size=(len(gallery_labels), width)).astype(np.float32)),
            query_labels, gallery_labels)


def test_the_cross_fitted_score_keeps_each_query_in_its_place():
    # one fold: its query identities in two halves; the members alike, so every choice is plain nearest
    # neighbours and each query's cross-fitted rank must be its own plain rank, in the fold's order
    fold = _noise_fold(np.random.default_rng(0), identities=9, queries_each=3)
    [masks] = [held_out_parts([fold])]
    assert len(masks) == 2 and not (masks[0] & masks[1]).any() and (masks[0] | masks[1]).all()
    plain = dict(score_recipes([fold], [PLAIN]))[PLAIN]
    crossed = cross_fitted_score([[fold], [fold]], [PLAIN])
    np.testing.assert_array_equal(crossed.ranks, plain.ranks)
    np.testing.assert_array_equal(crossed.precisions, plain.precisions)
    assert cross_fitted_score([[fold[:2] + ([0] * 27, fold[3])]] * 2, [PLAIN]) is None   # one identity: nothing to hold out


def test_the_cross_fitted_score_is_not_the_best_of_many_tries_on_the_same_queries():
    # three members of noise over three folds: weights chosen on the scored queries find the luckiest
    # mix; chosen on the other folds they do no better than chance, on average over draws
    generator, in_sample, crossed = np.random.default_rng(1), [], []
    for _ in range(8):
        rows = [[_noise_fold(generator, identities=6, queries_each=2) for _ in range(3)] for _ in range(3)]
        labels = [(fold[2], fold[3]) for fold in rows[0]]
        in_sample.append(search_weights([[(q, g) for q, g, _, _ in member] for member in rows], labels).score.score)
        crossed.append(cross_fitted_score(rows, [PLAIN]).score)
    assert np.mean(crossed) < np.mean(in_sample) - 50, (crossed, in_sample)


def test_the_label_names_the_weighted_members_heaviest_first():
    assert ensemble_label(["face-zs", "cnn-zs", "clip-zs"], (0.3, 0.7, 0.0)) == "ensemble[cnn-zs=0.7,face-zs=0.3]"
    assert ensemble_label(["a", "b"], (1.0, 3.0)) == "ensemble[b=0.75,a=0.25]"


# --- in a race ------------------------------------------------------------------------------------


class OracleEncoder(Encoder):
    """Knows each image's identity (from a table of image content -> identity). One view is the
    identity (a fixed random direction per identity), the other is noise (random per image):
    `plain` says which view encode() gives, and flip() swaps them, so flip TTA averages both."""

    flippable = True
    batch_size = 8

    def __init__(self, identities: dict[str, str], width: int, plain: str):
        self.identities, self.width, self.plain = identities, width, plain
        self.fingerprint = fingerprint_of("test-oracle", width, plain, sorted(identities.items()))

    def preprocess(self, image):
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        return np.array([int(digest[:8], 16), int(hashlib.sha1(self.identities[digest].encode()).hexdigest()[:8], 16),
                         0], dtype=np.int64)

    def collate(self, items):
        return np.stack(items)

    def flip(self, batch):
        flipped = batch.copy()
        flipped[:, 2] = 1 - flipped[:, 2]
        return flipped

    def encode(self, batch) -> np.ndarray:
        rows = []
        for image_seed, identity_seed, flipped in batch:
            identity_view = (self.plain == "identity") != bool(flipped)
            seed = identity_seed if identity_view else image_seed
            rows.append(np.random.default_rng([int(seed), self.width]).standard_normal(self.width))
        return l2_normalise(np.array(rows))


class OracleStrategy(Strategy):
    name = "test-oracle"
    summary = "test only: knows the identities"
    images_per_second_cpu = 100.0

    def __init__(self, identities: dict[str, str], width: int, plain: str):
        super().__init__(width=width, plain=plain)
        self.identities = identities

    def weights_status(self) -> WeightsStatus:
        return WeightsStatus(True, "no weights")

    def fit(self, training, context=None, deadline=None) -> Fitted:
        return Fitted(OracleEncoder(self.identities, self.options["width"], self.options["plain"]))


def _identities(competition, answers) -> dict[str, str]:
    """Image content hash -> identity, for training and test images."""
    labelled = [(image.path, image.label) for image in competition.training]
    labelled += [(path, answers["query"][path.name]) for path in competition.queries]
    labelled += [(path, answers["gallery"][path.name]) for path in competition.gallery]
    return {hashlib.sha1(load_rgb(path).tobytes()).hexdigest(): label for path, label in labelled}


def test_the_ensemble_is_a_run_of_its_own_built_from_each_members_chosen_flip(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    answers = json.loads((synthetic_competition / "answers.json").read_text())
    identities = _identities(competition, answers)
    # noise plain, identity mirrored: flip TTA wins; identity plain: flip TTA only ties, so plain stays
    wants_flip = OracleStrategy(identities, width=32, plain="noise")
    plain_is_best = OracleStrategy(identities, width=48, plain="identity")
    cache = tmp_path / "cache"
    result = race(competition, [wants_flip, plain_is_best], submissions_dir=tmp_path / "subs", cache_dir=cache,
                      num_workers=0, show_progress=False, leaderboard=tmp_path / "board.db", held_out_fraction=0.4)
    flipped, plain, ensemble = result.runs
    assert (flipped.flip_tta, plain.flip_tta) == (True, False)
    assert ensemble.strategy == "ensemble" and ensemble.status == "finished", ensemble.reason
    assert ensemble.label.startswith("ensemble[") and ensemble.flip_tta is None   # members differ
    members = {member.label: member for member in (flipped, plain)}
    assert ensemble.options["flip"] == [members[label].flip_tta for label in ensemble.options["members"]]
    assert ensemble.validation.score == pytest.approx(1000.0)

    # each member's kept embeddings are those of its own flip setting, straight from the cache
    test_paths = list(competition.queries) + list(competition.gallery)
    members = {member.label: member for member in (flipped, plain)}
    tests = []
    for label in ensemble.options["members"]:
        member = members[label]
        encoder = OracleEncoder(identities, member.options["width"], member.options["plain"])
        kept_folds = list(zip(result.yardstick.fold_paths, member.vectors.validation))
        for paths, kept in kept_folds + [(test_paths, member.vectors.test)]:
            again = embed_images(encoder, paths, cache_dir=cache, flip_tta=member.flip_tta, num_workers=0,
                                 show_progress=False)
            assert again.computed == 0
            np.testing.assert_array_equal(again.vectors, kept.vectors)
        tests.append(member.vectors.test.vectors)

    # the ensemble's submission: the members' test embeddings fused with its weights, its recipe applied
    fused = fuse(tests, ensemble.options["weights"])
    assert fused.shape[1] == sum(members[label].options["width"] for label in ensemble.options["members"])
    recipe = ensemble.post_processing
    assert recipe in candidate_recipes()
    count = len(competition.queries)
    expected = build_submission(competition.queries, competition.gallery,
                                ranked_indices(recipe, fused[:count], fused[count:], 10))
    submission = load_submission(ensemble.submission)
    assert submission == expected
    validate_submission(submission, [p.name for p in competition.queries], [p.name for p in competition.gallery])

    assert race_table(result).row_count == 3
    with Leaderboard(tmp_path / "board.db") as board:
        row = next(row for row in board.runs(result.race_id) if row.strategy == "ensemble")
    assert row.name == ensemble.label and row.status == "finished"
    assert row.validation_score == pytest.approx(ensemble.validation.score)
    assert json.loads(row.options)["members"] == ensemble.options["members"]


def test_with_a_budget_an_outclassed_zero_shot_run_is_not_embedded_on_the_test(tmp_path, synthetic_competition):
    """Zero-shot runs are all validated first, then their tests embedded best first; one whose
    validation interval lies wholly below the best's cannot be chosen, so it gets no test pass."""
    competition = find_competition(synthetic_competition)
    answers = json.loads((synthetic_competition / "answers.json").read_text())
    identities = _identities(competition, answers)
    noise, oracle = OracleStrategy(identities, width=32, plain="noise"), OracleStrategy(identities, width=48, plain="identity")
    cache = tmp_path / "cache"
    result = race(competition, [noise, oracle], submissions_dir=tmp_path / "subs", cache_dir=cache, num_workers=0,
                  show_progress=False, leaderboard=tmp_path / "board.db", flip_tta=False, budget_seconds=3600)
    runs = {run.options["plain"]: run for run in result.runs if run.strategy != "ensemble"}
    assert runs["identity"].status == "finished" and runs["identity"].chosen
    assert runs["noise"].status == "skipped" and runs["noise"].reason.startswith("outclassed on validation"), \
        runs["noise"].reason
    assert runs["noise"].validation is not None and runs["noise"].submission is None
    test_paths = list(competition.queries) + list(competition.gallery)
    again = embed_images(OracleEncoder(identities, 32, "noise"), test_paths, cache_dir=cache, flip_tta=False,
                         num_workers=0, show_progress=False)
    assert again.computed == len(test_paths)          # its test images were never embedded
    with Leaderboard(tmp_path / "board.db") as board:
        recorded = {run.name: run for run in board.runs()}
    assert recorded[runs["noise"].label].status == "skipped" and recorded[runs["noise"].label].validation_score is not None
