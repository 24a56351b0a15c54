"""A run's rankings as its race computed them, from the leaderboard, or a submission file's read back.

A race keeps each finished run's rankings with its row (toolkit.records.rankings), ensembles and
trained runs included, so they are read back as they were. For a row from before that, the run is
re-created: its strategy created again by name (by the registry's `create_strategy`, which the
caller passes in), its race row's data folder and validation split (seed, held-out fraction,
gallery pattern) made again, the images embedded with the run's flip setting (from the embedding
cache, so nothing is re-computed when the race ran here with the same cache) and the run's
post-processing recipe applied again:

- on the validation split the labels are known, so each result is a hit or a miss, and each
  query's first hit is ranked over the whole validation gallery (to find the worst queries);
- on the test set the ranking is the submission's, with the cosine similarity of each result.

A submission file that no race wrote gives the test ranking only, read from the file: ranks, no
similarities. So does an older row that cannot be re-created by name (an ensemble of other runs;
a strategy that trains): its own submission file is read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from toolkit.data.dataset import CompetitionData, LayoutError, find_competition
from toolkit.data.split import detect_gallery_pattern
from toolkit.machine.console import warn
from toolkit.machine.interrupts import raise_if_stopped
from toolkit.models.weights import WeightsUnavailable
from toolkit.race.config import AUTO, RaceConfig
from toolkit.race.contract import RaceContext, Strategy
from toolkit.race.validation import Yardstick, gallery_per_query
from toolkit.views.text import shorten
from toolkit.records.provenance import data_fingerprint
from toolkit.records.rankings import SPLITS, Rankings, joined, ranked_test, rankings_from_record, validation_rankings
from toolkit.records.store import Leaderboard, Run
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.ranking import rank_gallery
from toolkit.retrieval.recipes import PLAIN, Recipe
from toolkit.submit.submission import RESULTS_PER_QUERY, SubmissionError, load_submission

__all__ = ["Rankings", "ReplayError", "rankings_to_show", "replay_run", "run_flip", "run_recipe", "submission_rankings"]


class ReplayError(RuntimeError):
    """A run or a submission file whose rankings cannot be re-created here (the message says why)."""


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
    flip, chosen = run_flip(record, options), run_recipe(record)
    title = f"run {record.id}: {record.name}" + (f" ({_describe(flip, chosen)})" if flip or not chosen.plain else "")
    kept = board.run_rankings(record.id)
    if kept and set(splits) <= set(kept):
        try:
            return {split: rankings_from_record(kept[split], competition.root, title) for split in splits}
        except ValueError as error:
            warn(f"run {record.id}: {error}; creating it again")
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
        return _from_submission_file(record, splits, competition, "it trained its model, and its row keeps no "
                                     "rankings (recorded before races kept them), so it cannot be re-created")
    context = RaceContext(gallery_pattern=pattern, cache_dir=cache_dir, num_workers=num_workers, show_progress=show_progress)
    try:
        encoder = strategy.fit(yardstick.folds[0].fit, context).encoder
    except Exception as error:  # a strategy's own failure, as the race catches it: a message, never a crash
        raise_if_stopped(error)
        if isinstance(error, WeightsUnavailable):
            raise ReplayError(f"run {record.id}: cannot create {record.name} again ({error})") from None
        raise ReplayError(f"run {record.id}: cannot create {record.name} again ({type(error).__name__}: "
                          f"{shorten(str(error), 160)})") from None
    rankings = {}
    if "validation" in splits:
        folds = [validation_rankings(context.embed(encoder, paths, description="validation", flip_tta=flip),
                                     fold, chosen, title)
                 for fold, paths in zip(yardstick.folds, yardstick.fold_paths)]
        rankings["validation"] = joined(folds)
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


def _test_rankings(embeddings: Embeddings, competition: CompetitionData, chosen: Recipe,
                   title: str) -> Rankings:
    """As the race ranked the test set for the submission (unreadable gallery images last)."""
    indices = rank_gallery(embeddings, len(competition.queries), chosen, RESULTS_PER_QUERY)
    return ranked_test(embeddings, competition.queries, competition.gallery, indices, title)
