import numpy as np
import pytest

from toolkit.retrieval.metrics import (AnswersError, average_precisions, competition_score, first_hit_ranks,
                             score_rankings, score_submission, top_k_accuracy)
from toolkit.submit.submission import SubmissionError


def test_first_hit_ranks_are_one_based_and_zero_for_a_miss():
    ranked = [["a", "b", "c"], ["b", "b", "a"], ["c", "c", "c"]]
    assert first_hit_ranks(ranked, ["a", "a", "a"]).tolist() == [1, 3, 0]


def test_top_k_counts_hits_within_k_only():
    ranks = np.array([1, 3, 0, 6, 10, 11])
    assert top_k_accuracy(ranks, 1) == pytest.approx(1 / 6)
    assert top_k_accuracy(ranks, 5) == pytest.approx(2 / 6)
    assert top_k_accuracy(ranks, 10) == pytest.approx(4 / 6)


def test_competition_score_weights():
    assert competition_score(1, 1, 1) == 1000
    assert competition_score(0.5, 0.75, 1.0) == pytest.approx(300 + 225 + 100)


def test_average_precision_by_hand():
    # hits at ranks 1 and 3, 2 relevant: (1/1 + 2/3) / 2
    ap = average_precisions([["a", "x", "a", "x"]], ["a"], [2])
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # 5 relevant in the gallery but a list of 2: normalised by min(5, 2)
    assert average_precisions([["x", "a"]], ["a"], [5])[0] == pytest.approx(0.5 / 2)
    assert average_precisions([["x", "y"]], ["a"], [1])[0] == 0


def test_score_rankings_hand_computed_case():
    query_labels = ["a", "b", "c", "d"]
    ranked = [["a"] + ["z"] * 9,                  # rank 1
              ["z", "z", "b"] + ["z"] * 7,        # rank 3
              ["z"] * 7 + ["c", "z", "z"],        # rank 8
              ["z"] * 10]                         # miss
    gallery = ["a", "b", "c", "d"] + ["z"] * 10
    result = score_rankings(ranked, query_labels, gallery)
    assert (result.top1, result.top5, result.top10) == (0.25, 0.5, 0.75)
    assert result.score == pytest.approx(600 * 0.25 + 300 * 0.5 + 100 * 0.75)
    assert result.map_at_10 == pytest.approx((1 + 1 / 3 + 1 / 8 + 0) / 4)
    assert result.ranks.tolist() == [1, 3, 8, 0]


def test_score_submission_counts_missing_queries_as_misses():
    answers = {"query": {"q1.jpg": "a", "q2.jpg": "b"},
               "gallery": {"g1.jpg": "a", "g2.jpg": "b", "g3.jpg": "c"}}
    perfect = score_submission({"q1.jpg": ["g1.jpg", "g3.jpg", "g2.jpg"], "q2.jpg": ["g2.jpg", "g1.jpg", "g3.jpg"]},
                               answers)
    assert perfect.score == 1000
    half = score_submission({"q1.jpg": ["g1.jpg", "g2.jpg", "g3.jpg"]}, answers)
    assert half.score == 500 and half.queries == 2


def test_score_submission_rejects_unknown_queries_and_bad_answers():
    answers = {"query": {"q1.jpg": "a"}, "gallery": {"g1.jpg": "a"}}
    with pytest.raises(SubmissionError, match=r"1 entries are not queries, e.g. \['zz.jpg'\]"):
        score_submission({"q1.jpg": ["g1.jpg"], "zz.jpg": ["g1.jpg"]}, answers)
    with pytest.raises(AnswersError, match="both non-empty"):
        score_submission({"zz.jpg": ["g1.jpg"]}, {"query": {}, "gallery": {}})
    with pytest.raises(AnswersError):
        score_submission({}, {"queries": {}})
