"""A run's rankings re-created from the leaderboard, or a submission file's rankings read back.

A run row names its strategy and options; its race row names the data folder and the validation
split's seed, held-out fraction and gallery pattern. From these the strategy is created again
(by the registry's `create_strategy`, which the caller passes in), the images are embedded with the run's flip setting (from the embedding
cache, so nothing is re-computed when the race ran here with the same cache), the run's
post-processing recipe is applied again, and the rankings are exactly the race's:

- on the validation split the labels are known, so each result is a hit or a miss, and each
  query's first hit is ranked over the whole validation gallery (to find the worst queries);
- on the test set the ranking is the submission's, with the cosine similarity of each result.

A submission file that no race wrote gives the test ranking only, read from the file: ranks, no
similarities. So does a run that cannot be created again by name (an ensemble of other runs; a
strategy that trains, whose weights the race does not keep): its own submission file is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from toolkit.data.dataset import CompetitionData, LayoutError, find_competition
from toolkit.data.split import ValidationSplit, detect_gallery_pattern
from toolkit.machine.console import warn
from toolkit.models.weights import WeightsUnavailable
from toolkit.race.config import AUTO, RaceConfig
from toolkit.race.contract import RaceContext, Strategy
from toolkit.race.validation import Yardstick, gallery_per_query
from toolkit.views.text import shorten
from toolkit.records.provenance import data_fingerprint
from toolkit.records.store import Leaderboard, Run
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.metrics import first_hit_ranks
from toolkit.retrieval.ranking import rank_gallery, readable_validation
from toolkit.retrieval.recipes import PLAIN, Recipe, ranked_indices
from toolkit.submit.submission import RESULTS_PER_QUERY, SubmissionError, load_submission

SPLITS = ("validation", "test")


class ReplayError(RuntimeError):
    """A run or a submission file whose rankings cannot be re-created here (the message says why)."""


@dataclass
class Rankings:
    """What a run (or a submission file) returned for each query of one split."""
    title: str                               # e.g. "run 3: face-zs (flip + alpha-qe(alpha=3.0, n=1))"
    split: str                               # "validation" or "test"
    query_paths: list[Path]
    gallery_paths: list[Path]
    indices: np.ndarray                      # (queries, <= 10) gallery rows, best first
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


def replay_run(board: Leaderboard, run: Run | int, make_strategy: Callable[..., Strategy],
               splits: Sequence[str] = ("validation",), data: str | Path | None = None,
               cache_dir: Path | None = None, num_workers: int | None = None,
               show_progress: bool = False) -> dict[str, Rankings]:
    """The run's rankings on each of `splits`, as its race computed them. `make_strategy(name,
    **options)` creates a strategy by name (strategies.create_strategy; ValueError for a name it
    does not know). `data` replaces the race's data folder (e.g. when the race ran elsewhere)."""
    record = board.run(run) if isinstance(run, int) else run
    if record is None:
        raise ReplayError(f"no run {run} in {board.path}; invoke leaderboard --all lists the runs")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ReplayError(f"unknown split {unknown[0]!r}; splits: {', '.join(SPLITS)}")
    if record.race_id is None or not record.strategy:
        raise ReplayError(f"run {record.id} ({record.name}) was not written by a race, so it cannot be re-created; "
                          f"show its file with --submission {record.submission_path or 'FILE'} --data PATH")
    if record.status != "finished":
        raise ReplayError(f"run {record.id} ({record.name}) {record.status}"
                          f"{': ' + record.reason if record.reason else ''}; only finished runs have rankings")
    race = board.race(record.race_id)
    competition = _competition(data or (race.data_path if race else None), f"race {record.race_id}")
    if race is not None and race.data_fingerprint and data_fingerprint(competition) != race.data_fingerprint:
        warn(f"{competition.root} has changed since race {race.id} (other files or sizes): "
             "the rankings may differ from the race's")
    options = json.loads(race.options or "{}") if race else {}
    config = RaceConfig.from_recorded(options)
    pattern = config.gallery_pattern
    if pattern == AUTO:        # a row that does not say: what a race would detect today
        pattern = detect_gallery_pattern(competition.training)
    try:
        new = "max_folds" in options            # races before folds and shaping: one plain split
        yardstick = Yardstick.make(competition.training, config.held_out_fraction, config.seed, pattern,
                                   config.max_folds if new else 1,
                                   gallery_per_query(competition) if new and config.test_shaped else None)
    except ValueError as error:
        raise ReplayError(f"race {record.race_id}: no validation split of {competition.root} ({error})") from None
    try:
        strategy = make_strategy(record.strategy, **json.loads(record.options or "{}"))
    except ValueError as error:      # an ensemble of other runs, or a strategy this toolkit lacks
        return _from_submission_file(record, splits, competition, f"its strategy {record.strategy!r} cannot be "
                                     f"created by name ({shorten(str(error), 160)})")
    if strategy.trains:
        return _from_submission_file(record, splits, competition, "it trained its model, and the race keeps no "
                                     "weights, so it cannot be re-created without training again")
    context = RaceContext(gallery_pattern=pattern, cache_dir=cache_dir, num_workers=num_workers, show_progress=show_progress)
    try:
        encoder = strategy.fit(yardstick.folds[0].fit, context).encoder
    except WeightsUnavailable as error:
        raise ReplayError(f"run {record.id}: cannot create {record.name} again ({error})") from None
    except Exception as error:  # a strategy's own failure, as the race catches it: a message, never a crash
        raise ReplayError(f"run {record.id}: cannot create {record.name} again ({type(error).__name__}: "
                          f"{shorten(str(error), 160)})") from None
    flip, chosen = run_flip(record, options), run_recipe(record)
    title = f"run {record.id}: {record.name}" + (f" ({_describe(flip, chosen)})" if flip or not chosen.plain else "")
    rankings = {}
    if "validation" in splits:
        folds = [_validation_rankings(context.embed(encoder, paths, description="validation", flip_tta=flip),
                                      fold, chosen, title)
                 for fold, paths in zip(yardstick.folds, yardstick.fold_paths)]
        rankings["validation"] = _joined(folds)
    if "test" in splits:
        embeddings = context.embed(encoder, list(competition.queries) + list(competition.gallery),
                                   description="test", flip_tta=flip)
        rankings["test"] = _test_rankings(embeddings, competition, chosen, title)
    return rankings


def rankings_to_show(board: Leaderboard, run_id: int | None, submission: str | None, data: str | Path | None,
                     split: str, make_strategy: Callable[..., Strategy], num_workers: int | None = None) -> Rankings:
    """What `invoke show` draws: a submission file's rankings (re-created when a race wrote it),
    run `run_id`'s, or else the latest race's best run's, on `split`."""
    if run_id is not None and submission is not None:
        raise ReplayError("pass --run ID or --submission FILE, not both")
    record = None
    if submission is not None:
        path = Path(submission)
        if not path.is_file():
            raise ReplayError(f"{submission}: no such submission file")
        record = board.run_for_file(path)
        if record is None or record.race_id is None or record.status != "finished":
            if split == "validation":
                raise ReplayError(f"{path.name} was not written by a race of {board.path}: a submission file holds "
                                  "test rankings only; --validation and --worst need a run (--run ID)")
            return submission_rankings(path, data)
    elif run_id is not None:
        record = board.run(run_id)
        if record is None:
            raise ReplayError(f"no run {run_id} in {board.path}; invoke leaderboard --all lists the runs")
    else:
        record = board.best_run()
        if record is None:
            raise ReplayError(f"no finished run in the latest race of {board.path}; pass --run ID or "
                              "--submission FILE --data PATH")
    return replay_run(board, record, make_strategy, (split,), data=data, show_progress=True,
                      num_workers=num_workers)[split]


def _from_submission_file(record: Run, splits: Sequence[str], competition: CompetitionData,
                          why: str) -> dict[str, Rankings]:
    """A run that cannot be re-created: its test ranking from its submission file (ranks only);
    validation refused."""
    reason = f"run {record.id} ({record.name}): {why}"
    if "validation" in splits:
        raise ReplayError(f"{reason}; its validation rankings cannot be shown (pick another run of the race)")
    if not record.submission_path or not Path(record.submission_path).is_file():
        raise ReplayError(f"{reason}, and its submission file {record.submission_path or ''} is gone")
    warn(f"{reason}; showing the ranking of its submission file (ranks only)")
    rankings = submission_rankings(record.submission_path, competition.root)
    rankings.title = f"run {record.id}: {record.name} (its submission file)"
    return {"test": rankings}


def run_flip(record: Run, race_options: dict) -> bool:
    """The flip setting the run used: its own column, else its notes (older rows), else the race's."""
    if record.flip_tta is not None:
        return bool(record.flip_tta)
    if record.notes and "flip TTA" in record.notes:
        return True
    return bool(race_options.get("flip_tta"))


def run_recipe(record: Run) -> Recipe:
    """The run's post-processing recipe as recorded; plain nearest neighbours if unreadable."""
    stored = record.post_processing
    if stored is None and record.notes:       # the oldest rows kept it in the notes
        stored = next((part.split(":", 1)[1].strip() for part in record.notes.split("; ")
                       if part.startswith("post-processing:")), None)
    try:
        return Recipe.from_record(stored)
    except (ValueError, KeyError, TypeError) as error:
        warn(f"run {record.id}: cannot read its post-processing {stored!r} ({error}); "
             "showing plain nearest neighbours")
        return PLAIN


def submission_rankings(path: str | Path, data: str | Path) -> Rankings:
    """The test rankings a submission file holds, ranks only. A name the competition lacks is
    kept (its cell says the file is not found)."""
    try:
        submission = load_submission(Path(path))
    except SubmissionError as error:
        raise ReplayError(str(error)) from None
    competition = _competition(data, f"submission {Path(path).name}")
    query_folder = competition.queries[0].parent if competition.queries else competition.root / "test" / "query"
    gallery_folder = competition.gallery[0].parent if competition.gallery else competition.root / "test" / "gallery"
    queries = {path.name: path for path in competition.queries}
    gallery_paths = list(competition.gallery)
    row_of = {path.name: row for row, path in enumerate(gallery_paths)}
    query_paths, rows = [], []
    for query in sorted(submission):
        names = [name for name in submission[query] if isinstance(name, str)][:RESULTS_PER_QUERY]
        for name in names:
            if name not in row_of:
                row_of[name] = len(gallery_paths)
                gallery_paths.append(gallery_folder / name)
        query_paths.append(queries.get(query, query_folder / query))
        rows.append([row_of[name] for name in names] + [-1] * (RESULTS_PER_QUERY - len(names)))
    return Rankings(title=f"submission {Path(path).name}", split="test", query_paths=query_paths,
                    gallery_paths=gallery_paths, indices=np.array(rows, dtype=np.int64).reshape(-1, RESULTS_PER_QUERY))


def _competition(data: str | Path | None, what: str) -> CompetitionData:
    if not data:
        raise ReplayError(f"{what}: no data folder is known; pass --data PATH")
    try:
        return find_competition(data)
    except LayoutError as error:
        raise ReplayError(f"{what}: {error}\n(pass the competition folder with --data PATH)") from None


def _describe(flip: bool, chosen: Recipe) -> str:
    return " + ".join((["flip"] if flip else []) + ([chosen.describe()] if not chosen.plain else []))


def _validation_rankings(embeddings: Embeddings, split: ValidationSplit, chosen: Recipe,
                         title: str) -> Rankings:
    """As the race ranked validation: unreadable images left out, the recipe applied; ranked over
    the whole gallery so that a first hit below 10 still has a rank."""
    rows = readable_validation(embeddings, split)
    query_vectors, gallery_vectors, query_labels, gallery_labels = rows.query, rows.gallery, rows.query_labels, \
        rows.gallery_labels
    query_paths, gallery_paths = rows.query_paths, rows.gallery_paths
    full = ranked_indices(chosen, query_vectors, gallery_vectors, len(gallery_vectors))
    labels = np.asarray(gallery_labels, dtype=object)
    indices = full[:, :RESULTS_PER_QUERY]
    return Rankings(title=title, split="validation", query_paths=query_paths, gallery_paths=gallery_paths,
                    indices=indices, similarities=_cosine(query_vectors, gallery_vectors, indices),
                    query_labels=list(query_labels), gallery_labels=list(gallery_labels),
                    first_hit=first_hit_ranks(labels[full].tolist(), list(query_labels)),
                    margin=_margins(query_vectors, gallery_vectors, query_labels, labels))


def _joined(folds: list[Rankings]) -> Rankings:
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


def _test_rankings(embeddings: Embeddings, competition: CompetitionData, chosen: Recipe,
                   title: str) -> Rankings:
    """As the race ranked the test set for the submission (unreadable gallery images last)."""
    vectors, count = embeddings.vectors, len(competition.queries)
    indices = rank_gallery(embeddings, count, chosen, RESULTS_PER_QUERY)
    return Rankings(title=title, split="test", query_paths=list(competition.queries),
                    gallery_paths=list(competition.gallery), indices=indices,
                    similarities=_cosine(vectors[:count], vectors[count:], indices))


def _margins(queries: np.ndarray, gallery: np.ndarray, query_labels: Sequence, gallery_labels: np.ndarray) -> np.ndarray:
    """Per query: the best same-identity cosine minus the best other-identity one (-inf/+inf when
    one side is empty). Negative: a stranger looks more alike than any image of the person."""
    similarity = queries @ gallery.T
    same = gallery_labels[None, :] == np.asarray(query_labels, dtype=object)[:, None]
    best_same = np.where(same, similarity, -np.inf).max(axis=1, initial=-np.inf)
    best_other = np.where(same, -np.inf, similarity).max(axis=1, initial=-np.inf)
    return (best_same - best_other).astype(np.float64)


def _cosine(queries: np.ndarray, gallery: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Cosine similarity of each shown result (the embeddings before any post-processing)."""
    return np.einsum("qd,qkd->qk", queries, gallery[indices]).astype(np.float32)
