"""Retrieval metrics, computed in one place from ranked labels (the pytorch-metric-learning habit).

The competition score is 600*Top1 + 300*Top5 + 100*Top10, where Top-k is the fraction of queries
whose identity appears within the first k results (1000 is perfect). Average precision is taken
over the ranked list that was returned (10 items for a submission), normalised by
min(relevant items in the gallery, list length), so mAP@10 here means the same for a local
validation ranking and for a submission file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from toolkit.data.jsonfile import JsonInputError, read_json
from toolkit.submit.submission import validate_submission

SCORE_WEIGHTS = {1: 600.0, 5: 300.0, 10: 100.0}


def first_hit_ranks(ranked_labels: Sequence[Sequence], query_labels: Sequence) -> np.ndarray:
    """1-based rank of the first result with the query's label; 0 when none is in the list."""
    ranks = np.zeros(len(query_labels), dtype=np.int64)
    for row, (ranking, label) in enumerate(zip(ranked_labels, query_labels)):
        for position, candidate in enumerate(ranking, start=1):
            if candidate == label:
                ranks[row] = position
                break
    return ranks


def top_k_accuracy(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose first hit is within the first k (rank 0 means no hit)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return 0.0
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def average_precisions(ranked_labels: Sequence[Sequence], query_labels: Sequence,
                       relevant_counts: Sequence[int]) -> np.ndarray:
    """AP of each ranked list, normalised by min(relevant in gallery, list length)."""
    values = np.zeros(len(query_labels), dtype=np.float64)
    for row, (ranking, label, relevant) in enumerate(zip(ranked_labels, query_labels, relevant_counts)):
        hits = np.array([candidate == label for candidate in ranking], dtype=bool)
        denominator = min(int(relevant), len(hits))
        if denominator == 0 or not hits.any():
            continue
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        values[row] = precision_at_hit.sum() / denominator
    return values


def competition_score(top1: float, top5: float, top10: float) -> float:
    return SCORE_WEIGHTS[1] * top1 + SCORE_WEIGHTS[5] * top5 + SCORE_WEIGHTS[10] * top10


@dataclass(frozen=True)
class RetrievalScore:
    score: float
    top1: float
    top5: float
    top10: float
    map_at_10: float
    queries: int
    ranks: np.ndarray = field(repr=False, compare=False)             # each query's first-hit rank
    precisions: np.ndarray | None = field(default=None, repr=False, compare=False)   # each query's AP@10

    @property
    def per_query(self) -> np.ndarray:
        """Each query's own competition score (600, 900 or 1000 for a hit at 1; 0 for none); their
        mean is `score`."""
        return query_scores(self.ranks)

    def as_dict(self) -> dict:
        return {"score": self.score, "top1": self.top1, "top5": self.top5, "top10": self.top10,
                "map_at_10": self.map_at_10, "queries": self.queries}


def score_rankings(ranked_labels: Sequence[Sequence], query_labels: Sequence,
                   gallery_labels: Sequence) -> RetrievalScore:
    """Score ranked gallery labels (one list per query, best first) against the query labels.
    `gallery_labels` is every gallery item's label, used to count relevant items per query."""
    ranked_labels = [list(ranking)[:10] for ranking in ranked_labels]
    ranks = first_hit_ranks(ranked_labels, query_labels)
    label_counts: dict = {}
    for label in gallery_labels:
        label_counts[label] = label_counts.get(label, 0) + 1
    relevant = [label_counts.get(label, 0) for label in query_labels]
    return score_from_ranks(ranks, average_precisions(ranked_labels, query_labels, relevant))


def score_from_ranks(ranks: np.ndarray, precisions: np.ndarray) -> RetrievalScore:
    """The score of queries given their first-hit ranks and their AP@10."""
    ranks, precisions = np.asarray(ranks, dtype=np.int64), np.asarray(precisions, dtype=np.float64)
    top1, top5, top10 = (top_k_accuracy(ranks, k) for k in (1, 5, 10))
    mean_ap = float(np.mean(precisions)) if len(ranks) else 0.0
    return RetrievalScore(score=competition_score(top1, top5, top10), top1=top1, top5=top5,
                          top10=top10, map_at_10=mean_ap, queries=len(ranks), ranks=ranks, precisions=precisions)


def pooled_score(scores: Sequence[RetrievalScore]) -> RetrievalScore:
    """One score over the queries of several validation folds together."""
    if len(scores) == 1:
        return scores[0]
    return score_from_ranks(np.concatenate([score.ranks for score in scores]),
                            np.concatenate([score.precisions for score in scores]))


def query_scores(ranks: np.ndarray) -> np.ndarray:
    """Each query's competition score from its first-hit rank (0: no hit in the list)."""
    ranks = np.asarray(ranks)
    hit = ranks >= 1
    return (SCORE_WEIGHTS[1] * (hit & (ranks <= 1)) + SCORE_WEIGHTS[5] * (hit & (ranks <= 5))
            + SCORE_WEIGHTS[10] * (hit & (ranks <= 10))).astype(np.float64)


class AnswersError(ValueError):
    """The answers file does not describe the submission's queries."""


def load_answers(path: str | Path) -> dict:
    """Read and check an answers file {"query": {file: identity}, "gallery": {file: identity}}
    (through toolkit.data.jsonfile); AnswersError naming the file and the problem."""
    try:
        answers = read_json(path, "answers file")
    except JsonInputError as error:
        raise AnswersError(str(error)) from None
    check_answers(answers, str(path))
    return answers


def check_answers(answers: object, source: str = "answers") -> None:
    """AnswersError unless *answers* is {"query": {file: identity}, "gallery": {file: identity}},
    both non-empty, every identity a string or an integer."""
    shape = '{"query": {file: identity}, "gallery": {file: identity}}'
    if not (isinstance(answers, Mapping) and isinstance(answers.get("query"), Mapping)
            and isinstance(answers.get("gallery"), Mapping)):
        raise AnswersError(f"{source}: answers must be {shape}, both non-empty")
    for part in ("query", "gallery"):
        if not answers[part]:
            raise AnswersError(f'{source}: "{part}" is empty; answers must be {shape}, both non-empty')
        odd = next((name for name, identity in answers[part].items()
                    if isinstance(identity, bool) or not isinstance(identity, (str, int))), None)
        if odd is not None:
            raise AnswersError(f'{source}: "{part}" gives {odd[:60]!r} the identity {str(answers[part][odd])[:60]}; '
                               "identities are strings or integers")


def score_submission(submission: Mapping[str, Sequence[str]], answers: Mapping) -> RetrievalScore:
    """Score a submission dict against answers {"query": {name: id}, "gallery": {name: id}}.
    Every query in the answers counts; a query missing from the submission scores zero. A
    submission the server would refuse (toolkit.submit.checks) is a SubmissionError."""
    check_answers(answers)
    query_truth, gallery_truth = answers["query"], answers["gallery"]
    validate_submission(submission, list(query_truth), list(gallery_truth), every_query=False)
    query_names = sorted(query_truth)
    ranked = [[gallery_truth[name] for name in submission.get(query, [])] for query in query_names]
    return score_rankings(ranked, [query_truth[name] for name in query_names], list(gallery_truth.values()))
