"""The recorder the race calls: one race row when it starts, one run row as each run ends (so a
crash later loses nothing), the race's seconds when it is done.

Each run gets a key, drawn once before its first write, that its row keeps: recording a run again
(the race records it once more when a Ctrl-C landed between the write and the race hearing of it)
updates its row, never adds a second one.

A finished run's rankings (toolkit.records.rankings: validation with labels, the test's submission
with similarities) are written with its row, from the embeddings it kept, so that `invoke show` and
the report can draw any run, an ensemble or a trained model too, without creating it again.

A leaderboard problem is a warning, never the end of the race. `run_fields` says what a race's
run (toolkit.race.runner.StrategyRun) becomes in a run row.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from toolkit.records.provenance import data_fingerprint
from toolkit.records.rankings import rankings_record, run_rankings
from toolkit.records.store import Leaderboard, LeaderboardError, open_leaderboard
from toolkit.submit.submission import SubmissionError, load_submission


def run_fields(run: Any) -> dict[str, Any]:
    """The run row's fields (toolkit.records.store.Run) of a StrategyRun, race and id aside."""
    score = run.validation
    return dict(
        name=run.label, strategy=run.strategy, options=run.options, status=run.status, reason=run.reason or None,
        notes="; ".join(run.notes) or None, fit_seconds=run.fit_seconds, embed_seconds=run.embed_seconds,
        validation_score=score.score if score else None, validation_top1=score.top1 if score else None,
        validation_top5=score.top5 if score else None, validation_top10=score.top10 if score else None,
        validation_map_at_10=score.map_at_10 if score else None, validation_queries=score.queries if score else None,
        plain_score=run.baseline.score if run.baseline else None,
        flip_tta=run.flip_tta if score else None,
        post_processing=run.post_processing if score else None,
        validation_low=run.interval[0] if run.interval else None,
        validation_high=run.interval[1] if run.interval else None,
        submission_path=str(Path(run.submission).resolve()) if run.submission else None)


class RaceRecorder:
    """Records one race into a leaderboard (a Leaderboard, its file, or None: nothing recorded).
    `yardstick` (toolkit.race.validation.Yardstick): the folds the runs are scored on, which their
    kept validation rankings need (None: no rankings kept)."""

    def __init__(self, leaderboard: Leaderboard | str | os.PathLike[str] | None, data: Any,
                 budget_seconds: float | None, options: dict, yardstick: Any = None):
        self.board: Leaderboard | None = None
        self.data, self.yardstick = data, yardstick
        self.owned = not isinstance(leaderboard, Leaderboard)
        self.race_id: int | None = None
        self.run_keys: dict[int, str] = {}     # id() of each StrategyRun (alive for the race) -> its key
        if leaderboard is None:
            return
        try:
            self.board = open_leaderboard(leaderboard)
            self.race_id = self.board.start_race(Path(data.root).resolve(), data_fingerprint(data),
                                                 budget_seconds, options).id
        except (LeaderboardError, SQLAlchemyError, OSError) as error:
            self._warn(error)

    def run_ended(self, run: Any) -> None:
        """Record a StrategyRun (toolkit.race.runner) once its status is final; sets run.run_id."""
        if self.board is None:
            return
        key = self.run_keys.setdefault(id(run), uuid.uuid4().hex)
        rankings = self.rankings(run)
        try:
            run.run_id = self.board.record_run(self.race_id, key, rankings=rankings, **run_fields(run)).id
        except (LeaderboardError, SQLAlchemyError, OSError) as error:
            self._warn(error)

    def rankings(self, run: Any) -> dict[str, bytes]:
        """A finished run's rankings as records ({split: bytes}); {} (with a warning when it should
        have had them) when it kept no embeddings or they cannot be ranked."""
        if run.status != "finished" or run.vectors is None or not run.submission or self.yardstick is None:
            return {}
        try:
            rankings = run_rankings(run.vectors, self.yardstick.folds, self.data.queries, self.data.gallery,
                                    run.post_processing, load_submission(run.submission))
            return {split: rankings_record(ranked, Path(self.data.root)) for split, ranked in rankings.items()}
        except (SubmissionError, OSError, ValueError, KeyError, IndexError) as error:
            from toolkit.machine.console import warn
            warn(f"{run.label}: its rankings are not kept ({error}); invoke show re-creates it if it can")
            return {}

    def race_ended(self, seconds: float, chosen: Any = None) -> None:
        """The race's seconds, and the run it chose as its best (a StrategyRun, or None)."""
        if self.board is None:
            return
        try:
            if self.race_id is not None:
                self.board.finish_race(self.race_id, seconds, chosen.run_id if chosen is not None else None)
        except (LeaderboardError, SQLAlchemyError, OSError) as error:
            self._warn(error)
        finally:
            if self.owned:
                self.board.close()

    def _warn(self, error: Exception) -> None:
        from toolkit.machine.console import warn
        where = self.board.path if self.board else "the leaderboard"
        warn(f"not recorded in {where}: {getattr(error, 'orig', None) or error}")
