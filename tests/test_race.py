import json

import pytest

from toolkit.data.dataset import find_competition
from toolkit.retrieval.metrics import score_submission
from tests.racing import race
from toolkit.race.config import parse_duration
from toolkit.views.race import race_table
from toolkit.submit.submission import load_submission, validate_submission


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1.5h", 5400),
                                            (None, None), ("", None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_nonsense():
    with pytest.raises(ValueError, match="90m"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="give a unit"):    # 90 seconds or 90 minutes?
        parse_duration("90")


def _check_submission(path, competition):
    submission = load_submission(path)
    validate_submission(submission, [p.name for p in competition.queries], [p.name for p in competition.gallery])
    return submission


def test_race_on_generated_data_writes_valid_submissions(tmp_path, synthetic_competition, tiny_clip_model):
    competition = find_competition(synthetic_competition)
    specs = [("clip-zs", {"model": tiny_clip_model, "pretrained": None}),
             ("cnn-zs", {"pretrained": False, "image_size": 64})]
    result = race(competition, specs, submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False, gallery_pattern="*_s.*")
    # zero-shot strategies by estimated cost (cnn-zs is the faster), then their ensemble
    assert [run.strategy for run in result.runs] == ["cnn-zs", "clip-zs", "ensemble"]
    assert [run.status for run in result.runs] == ["finished", "finished", "finished"]
    for run in result.runs:
        assert run.submission.parent == tmp_path / "subs"
        _check_submission(run.submission, competition)
        assert 0 <= run.validation.score <= 1000
        assert run.validation.queries == sum(len(fold.queries) for fold in result.yardstick.folds)
    assert result.best in result.runs
    assert load_submission(result.best_submission) == load_submission(result.best.submission)
    assert result.best_submission.name.endswith("-best.json")
    assert race_table(result).row_count == 3


def test_a_strategy_that_cannot_load_fails_alone(tmp_path, synthetic_competition, tiny_clip_model):
    competition = find_competition(synthetic_competition)
    specs = [("clip-zs", {"model": "ViT-B-32", "pretrained": "no-such-tag"}),
             ("clip-zs", {"model": tiny_clip_model, "pretrained": None})]
    result = race(competition, specs, submissions_dir=tmp_path, cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False)
    broken, working = sorted(result.runs, key=lambda run: run.options["model"] != "ViT-B-32")
    assert (broken.status, working.status) == ("failed", "finished")      # no such weights: a wrong option
    assert "no-such-tag" in broken.reason
    assert result.best is working


def test_a_strategy_that_cannot_finish_in_the_budget_is_skipped(tmp_path, synthetic_competition, tiny_clip_model):
    competition = find_competition(synthetic_competition)
    result = race(competition, [("face-zs", {}), ("clip-zs", {"model": tiny_clip_model, "pretrained": None})],
                      budget_seconds=2, submissions_dir=tmp_path, cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False)
    assert result.runs[0].status == "skipped" and "estimated" in result.runs[0].reason
    assert not list(tmp_path.glob("*face-zs*.json"))


def test_end_to_end_race_on_the_real_mini_benchmark(tmp_path, mini_benchmark, tiny_clip_model):
    competition = find_competition(mini_benchmark)
    specs = [("face-zs", {}), ("cnn-zs", {}), ("clip-zs", {"model": tiny_clip_model, "pretrained": None})]
    result = race(competition, specs, submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache",
                      show_progress=False, held_out_fraction=0.5)
    assert all(run.status == "finished" for run in result.runs), [run.reason for run in result.runs]
    answers = json.loads((mini_benchmark / "answers.json").read_text())
    test_scores = {run.label.split("[")[0]: score_submission(_check_submission(run.submission, competition), answers).score
                   for run in result.runs}
    # dlib's face descriptor is far above generic features on faces, even on 24 queries
    assert test_scores["face-zs"] >= 700
    assert test_scores["face-zs"] > test_scores["clip-zs"]
    strategies = [run for run in result.runs if run.strategy != "ensemble"]
    assert max(strategies, key=lambda run: run.validation.score).label == "face-zs"
    assert result.best.label in ("face-zs", result.runs[-1].label)   # face-zs, or an ensemble led by it
    assert result.runs[-1].label.startswith("ensemble[") and "face-zs=" in result.runs[-1].label


def test_validation_chooses_flip_and_post_processing_and_the_submission_applies_them(tmp_path, synthetic_competition, tiny_clip_model):
    from strategies import create_strategy
    from toolkit.retrieval.embed import embed_images
    from toolkit.retrieval.recipes import candidate_recipes, ranked_indices
    from toolkit.submit.submission import build_submission

    competition = find_competition(synthetic_competition)
    spec = ("clip-zs", {"model": tiny_clip_model, "pretrained": None})
    result = race(competition, [spec], submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False)
    [run] = result.runs
    assert run.status == "finished" and run.baseline is not None
    assert run.validation.score >= run.baseline.score
    chosen = run.post_processing
    assert chosen in candidate_recipes()

    encoder = create_strategy(spec[0], **spec[1]).fit([]).encoder
    test = embed_images(encoder, list(competition.queries) + list(competition.gallery), cache_dir=tmp_path / "cache",
                        flip_tta=run.flip_tta, num_workers=0, show_progress=False)
    assert test.computed == 0  # the race cached exactly these embeddings
    count = len(competition.queries)
    expected = build_submission(competition.queries, competition.gallery,
                                ranked_indices(chosen, test.vectors[:count], test.vectors[count:], 10))
    assert load_submission(run.submission) == expected


def test_no_rerank_and_no_flip_give_plain_nearest_neighbours(tmp_path, synthetic_competition, tiny_clip_model):
    competition = find_competition(synthetic_competition)
    result = race(competition, [("clip-zs", {"model": tiny_clip_model, "pretrained": None})],
                      submissions_dir=tmp_path, cache_dir=tmp_path / "cache", num_workers=0, show_progress=False,
                      flip_tta=False, post_process=False)
    [run] = result.runs
    assert (run.post_processing.plain, run.flip_tta) == (True, False)
    assert run.validation == run.baseline


def test_the_chosen_post_processing_is_recorded_with_the_run(tmp_path, synthetic_competition, tiny_clip_model):
    from toolkit.records.store import Leaderboard
    from toolkit.views.leaderboard import leaderboard_table

    competition = find_competition(synthetic_competition)
    result = race(competition, [("clip-zs", {"model": tiny_clip_model, "pretrained": None})],
                      submissions_dir=tmp_path, cache_dir=tmp_path / "cache", num_workers=0, show_progress=False,
                      leaderboard=tmp_path / "board.db")
    [run] = result.runs
    with Leaderboard(tmp_path / "board.db") as board:
        [row] = board.runs()
        assert (row.post_processing, row.flip_tta) == (run.post_processing, run.flip_tta)
        assert row.plain_score == pytest.approx(run.baseline.score)
        assert row.validation_score == pytest.approx(run.validation.score)
        assert leaderboard_table(board.summaries(result.race_id), "race").row_count == 1


def test_auto_gallery_pattern_is_detected_and_handed_to_the_strategies(tmp_path, synthetic_competition, tiny_clip_model):
    from strategies import create_strategy

    competition = find_competition(synthetic_competition)
    told = []

    class Recording(type(create_strategy("clip-zs"))):
        def fit(self, training, context=None, deadline=None):
            told.append(context)
            return super().fit(training, context, deadline)

    strategy = Recording(model=tiny_clip_model, pretrained=None)
    result = race(competition, [strategy], submissions_dir=tmp_path, cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False, gallery_pattern="auto", ensemble_size=0)
    [context] = told
    assert context.gallery_pattern == "*_s.*" and context.cache_dir == tmp_path / "cache"
    # a small training folder is the choice split whole (less the distractors' queries), then the test set
    validation = set(result.yardstick.choice_paths).union(*result.yardstick.fold_paths)
    assert sorted(context.pending_images) == sorted(validation | set(competition.queries) | set(competition.gallery))
    assert len(validation) < len(competition.training)
    assert all(item.path.stem.endswith("_s") for item in result.split.gallery if item.label in
               {query.label for query in result.split.queries})


def test_a_trained_run_ranks_the_test_with_its_folds_encoders_fused(tmp_path, synthetic_competition):
    import numpy as np

    from toolkit.retrieval.ranking import rank_gallery
    from toolkit.submit.submission import build_submission

    competition = find_competition(synthetic_competition)
    adapter = ("adapter", {"base": "cnn-zs[pretrained=false,image_size=64]", "steps": 30, "evaluate_every": 10})
    result = race(competition, [adapter], submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache",
                  num_workers=0, show_progress=False, ensemble_size=0, flip_tta=False)
    [run] = result.runs
    folds = len(result.yardstick.folds)
    assert run.status == "finished" and folds > 1
    validation, test = run.vectors.validation, run.vectors.test
    assert len(validation) == folds and test.vectors.shape[1] == folds * validation[0].vectors.shape[1]
    assert np.allclose(np.linalg.norm(test.vectors, axis=1), 1.0, atol=1e-5)
    assert any("folds' encoders fused" in note for note in run.notes)
    indices = rank_gallery(test, len(competition.queries), run.post_processing, 10)
    assert load_submission(run.submission) == build_submission(competition.queries, competition.gallery, indices)


def test_a_strategy_without_its_weights_offline_is_skipped_not_failed(tmp_path, synthetic_competition):
    """Offline, a strategy whose weights are not on disk (clip-zs in a default race) is left out with
    its reason, as "skipped", and the others race."""
    from strategies.base import WeightsUnavailable
    from tests.test_race_budget import PixelStrategy

    class NoWeights(PixelStrategy):
        def fit(self, training, context=None, deadline=None):
            raise WeightsUnavailable("no-weights needs its weights: the model hub is unreachable")

    competition = find_competition(synthetic_competition)
    result = race(competition, [NoWeights(seed=1), PixelStrategy()], submissions_dir=tmp_path,
                  cache_dir=tmp_path / "cache", num_workers=0, show_progress=False, ensemble_size=0)
    statuses = {run.options["seed"]: (run.status, run.reason) for run in result.runs}
    assert statuses[1] == ("skipped", "no-weights needs its weights: the model hub is unreachable")
    assert statuses[0][0] == "finished" and result.best.options["seed"] == 0
