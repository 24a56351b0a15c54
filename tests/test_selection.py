"""Choosing the best run: the simpler run when scores tie within the interval, and a race on a
generated competition with few identities that never picks a run far below the best strategy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.racing import race
from toolkit.data.dataset import find_competition
from toolkit.data.synthetic import make_synthetic_competition
from toolkit.race.runs import StrategyRun
from toolkit.race.selection import best_run, choose_best
from toolkit.retrieval.metrics import score_from_ranks, score_submission


def _run(label, ranks, strategy="cnn-zs", trains=False):
    ranks = np.asarray(ranks)
    return StrategyRun(label=label, status="finished", strategy=strategy, trains=trains,
                       validation=score_from_ranks(ranks, np.zeros(len(ranks))), submission=Path(f"{label}.json"))


def test_a_simpler_run_tied_with_the_best_is_chosen_and_a_clear_winner_is_not_passed_over():
    rng = np.random.default_rng(0)
    single = rng.choice([1, 1, 1, 2, 0], size=40)
    tied = single.copy()
    tied[:2] = 1                                             # two queries better: within the noise
    chosen, note = choose_best([_run("ensemble[a=0.5,b=0.5]", tied, strategy="ensemble"), _run("cnn-zs", single)])
    assert chosen.label == "cnn-zs" and "tied on validation" in note and "ensemble" in note
    much_better = np.ones(40, dtype=int)
    chosen, note = choose_best([_run("ensemble[a=0.5,b=0.5]", much_better, strategy="ensemble"),
                                _run("cnn-zs", single)])
    assert chosen.label.startswith("ensemble") and note == ""
    trained = _run("adapter", tied, strategy="adapter", trains=True)
    assert choose_best([trained, _run("face-zs", single, strategy="face-zs")])[0].label == "face-zs"


def test_the_best_run_is_the_one_the_race_chose():
    first, second = _run("a", [1] * 10), _run("b", [2] * 10)
    assert best_run([second, first]) is first
    second.chosen = True
    assert best_run([first, second]) is second
    assert choose_best([]) == (None, "")


@pytest.mark.parametrize("seed", [0, 3])
def test_few_identities_never_pick_a_run_far_below_the_best_strategy(tmp_path, seed):
    """10 training identities (validation: a few queries), 24 test identities: enough test queries
    that 50 points are more than one query's luck (with 6, a Top-1 miss alone was 50). Seed 3 is
    the case of an ensemble whose weights and recipe, chosen on validation and scored there,
    reached 1000.0 and then 508 on the test against 700 for a single strategy."""
    root = make_synthetic_competition(tmp_path / "competition", training_identities=10, test_identities=24,
                                      distractors=12, size=96, seed=seed)
    competition = find_competition(root)
    result = race(competition, [("face-zs", {}), ("cnn-zs", {"image_size": 96}), ("cnn-zs", {"pooling": "gem",
                                                                                             "image_size": 96})],
                  submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache", num_workers=0, show_progress=False)
    answers = json.loads((root / "answers.json").read_text())
    test = {run.label: score_submission(json.loads(run.submission.read_text()), answers).score
            for run in result.runs if run.status == "finished"}
    best_single = max(score for label, score in test.items() if not label.startswith("ensemble"))
    assert len(result.yardstick.folds) > 1          # few identities: the yardstick pools several folds
    assert result.best is not None and test[result.best.label] >= best_single - 50, (result.best.label, test)
