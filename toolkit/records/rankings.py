"""What a run returned for each query, computed as the race ranked it and kept with its run row, so
that `invoke show` and the report can draw any run a race recorded (an ensemble, a trained model)
without creating it again.

    run_rankings(vectors, folds, queries, gallery, recipe, submission)   -> {"validation": ..., "test": ...}
    rankings_record(rankings, root) -> bytes        rankings_from_record(data, root, title) -> Rankings
    RunRankings                                     the leaderboard's table of them

- validation: each fold's readable queries ranked over its whole readable gallery with the run's
  recipe (so a first hit below 10 still has a rank), labels known, folds laid end to end;
- test: the run's submission (what it would send), with the cosine similarity of each result.
A record keeps paths relative to the competition folder, so a moved folder still reads.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sqlalchemy import Index, LargeBinary
from sqlmodel import Field, SQLModel

from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.metrics import first_hit_ranks
from toolkit.retrieval.ranking import readable_validation
from toolkit.retrieval.recipes import Recipe, ranked_indices
from toolkit.submit.submission import RESULTS_PER_QUERY

SPLITS = ("validation", "test")


@dataclass
class Rankings:
    """What a run (or a submission file) returned for each query of one split."""
    title: str                               # e.g. "run 3: face-zs (flip + alpha-qe(alpha=3.0, n=1))"
    split: str                               # "validation" or "test"
    query_paths: list[Path]
    gallery_paths: list[Path]
    indices: np.ndarray                      # (queries, <= 10) gallery rows, best first; -1: none
    similarities: np.ndarray | None = None   # cosine similarity of each result; None for a bare file
    query_labels: list[str] | None = None    # validation only
    gallery_labels: list[str] | None = None
    first_hit: np.ndarray | None = None      # 1-based rank of the first hit over the whole gallery; 0: none
    margin: np.ndarray | None = None         # best same-identity cosine minus best other-identity cosine

    @property
    def labelled(self) -> bool:
        return self.query_labels is not None and self.gallery_labels is not None

    def is_hit(self, query: int, position: int) -> bool | None:
        """Whether the result at `position` shows the query's identity; None without labels."""
        if not self.labelled:
            return None
        return self.gallery_labels[self.indices[query, position]] == self.query_labels[query]


def run_rankings(vectors, folds: Sequence, queries: Sequence[Path], gallery: Sequence[Path], recipe: Recipe,
                 submission: Mapping[str, Sequence[str]], title: str = "") -> dict[str, Rankings]:
    """A finished run's rankings from what it kept (toolkit.race.runs.RunVectors: each validation
    fold's embeddings and the test's), the yardstick's `folds`, the test's query and gallery files,
    its recipe and its submission ({query name: gallery names})."""
    validation = [validation_rankings(embeddings, fold, recipe, title)
                  for embeddings, fold in zip(vectors.validation, folds)]
    return {"validation": joined(validation), "test": submitted_rankings(vectors.test, queries, gallery, submission,
                                                                         title)}


def validation_rankings(embeddings: Embeddings, split, chosen: Recipe, title: str) -> Rankings:
    """As the race ranked validation: unreadable images left out, the recipe applied; ranked over
    the whole gallery so that a first hit below 10 still has a rank."""
    rows = readable_validation(embeddings, split)
    full = ranked_indices(chosen, rows.query, rows.gallery, len(rows.gallery))
    labels = np.asarray(rows.gallery_labels, dtype=object)
    indices = full[:, :RESULTS_PER_QUERY]
    return Rankings(title=title, split="validation", query_paths=rows.query_paths, gallery_paths=rows.gallery_paths,
                    indices=indices, similarities=cosines(rows.query, rows.gallery, indices),
                    query_labels=list(rows.query_labels), gallery_labels=list(rows.gallery_labels),
                    first_hit=first_hit_ranks(labels[full].tolist(), list(rows.query_labels)),
                    margin=margins(rows.query, rows.gallery, rows.query_labels, labels))


def joined(folds: list[Rankings]) -> Rankings:
    """The validation folds' rankings as one: each fold ranked its own gallery, so the galleries
    are laid end to end and each fold's indices moved by the galleries before it."""
    if len(folds) == 1:
        return folds[0]
    offsets = np.cumsum([0] + [len(fold.gallery_paths) for fold in folds[:-1]])
    return Rankings(title=folds[0].title, split="validation",
                    query_paths=[path for fold in folds for path in fold.query_paths],
                    gallery_paths=[path for fold in folds for path in fold.gallery_paths],
                    indices=np.concatenate([fold.indices + offset for fold, offset in zip(folds, offsets)]),
                    similarities=np.concatenate([fold.similarities for fold in folds]),
                    query_labels=[label for fold in folds for label in fold.query_labels],
                    gallery_labels=[label for fold in folds for label in fold.gallery_labels],
                    first_hit=np.concatenate([fold.first_hit for fold in folds]),
                    margin=np.concatenate([fold.margin for fold in folds]))


def ranked_test(embeddings: Embeddings, queries: Sequence[Path], gallery: Sequence[Path], indices: np.ndarray,
                  title: str) -> Rankings:
    """The test ranking `indices` (gallery rows per query) with each result's cosine similarity."""
    count = len(queries)
    vectors = embeddings.vectors
    shown = np.where(indices < 0, 0, indices)
    similarities = np.where(indices < 0, np.nan, cosines(vectors[:count], vectors[count:], shown)).astype(np.float32)
    return Rankings(title=title, split="test", query_paths=list(queries), gallery_paths=list(gallery),
                    indices=indices, similarities=similarities)


def submitted_rankings(embeddings: Embeddings, queries: Sequence[Path], gallery: Sequence[Path],
                       submission: Mapping[str, Sequence[str]], title: str) -> Rankings:
    """The test ranking a submission holds (its names as gallery rows), with the similarities."""
    row_of = {path.name: row for row, path in enumerate(gallery)}
    rows = [[row_of[name] for name in submission[query.name]][:RESULTS_PER_QUERY] for query in queries]
    width = min(RESULTS_PER_QUERY, len(gallery))
    indices = np.array([row + [-1] * (width - len(row)) for row in rows], dtype=np.int64).reshape(len(queries), width)
    return ranked_test(embeddings, queries, gallery, indices, title)


def margins(queries: np.ndarray, gallery: np.ndarray, query_labels: Sequence, gallery_labels: np.ndarray) -> np.ndarray:
    """Per query: the best same-identity cosine minus the best other-identity one (-inf/+inf when
    one side is empty). Negative: a stranger looks more alike than any image of the person."""
    similarity = queries @ gallery.T
    same = gallery_labels[None, :] == np.asarray(query_labels, dtype=object)[:, None]
    best_same = np.where(same, similarity, -np.inf).max(axis=1, initial=-np.inf)
    best_other = np.where(same, -np.inf, similarity).max(axis=1, initial=-np.inf)
    return (best_same - best_other).astype(np.float64)


def cosines(queries: np.ndarray, gallery: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Cosine similarity of each shown result (the embeddings before any post-processing)."""
    return np.einsum("qd,qkd->qk", queries, gallery[indices]).astype(np.float32)


# --- kept in the leaderboard -------------------------------------------------------------------


class RunRankings(SQLModel, table=True):
    """The leaderboard's table of kept rankings (toolkit.records.store writes and reads it)."""
    __tablename__ = "run_rankings"
    __table_args__ = (Index("ix_run_rankings_split", "run_id", "split", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    split: str                                 # "validation" or "test"
    data: bytes = Field(sa_type=LargeBinary)   # rankings_record's bytes


_ARRAYS = ("indices", "similarities", "first_hit", "margin")
_TEXTS = ("query_labels", "gallery_labels")


def rankings_record(rankings: Rankings, root: Path) -> bytes:
    """The rankings as bytes for the leaderboard (compressed .npz, no pickles); paths relative to
    the competition folder `root` where they are in it."""
    root = Path(root).resolve()
    arrays = {"split": np.array(rankings.split),
              "query_paths": _texts(_relative(path, root) for path in rankings.query_paths),
              "gallery_paths": _texts(_relative(path, root) for path in rankings.gallery_paths)}
    arrays.update({name: getattr(rankings, name) for name in _ARRAYS if getattr(rankings, name) is not None})
    arrays.update({name: _texts(getattr(rankings, name)) for name in _TEXTS if getattr(rankings, name) is not None})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def rankings_from_record(data: bytes, root: Path, title: str) -> Rankings:
    """Rankings read back from rankings_record's bytes, paths under the competition folder `root`;
    ValueError when the bytes are not such a record."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            values = {name: stored[name] for name in stored.files}
        return Rankings(title=title, split=str(values["split"]),
                        query_paths=[root / path for path in values["query_paths"].tolist()],
                        gallery_paths=[root / path for path in values["gallery_paths"].tolist()],
                        **{name: values[name] for name in _ARRAYS if name in values},
                        **{name: values[name].tolist() for name in _TEXTS if name in values})
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(f"its kept rankings cannot be read ({error})") from None


def _relative(path: Path, root: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _texts(values) -> np.ndarray:
    return np.array([str(value) for value in values], dtype=str)
