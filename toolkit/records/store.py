"""The leaderboard store: every race, every strategy run and every server submission, in one
SQLite file, with the queries and writes the toolkit makes.

Four tables (sqlmodel):

    race               one per `invoke race`: start and end, budget, data path and fingerprint,
                       machine (CPU, GPU), torch / open_clip versions, git commit, split options
    run                one per strategy run: name, options (JSON), status (finished / skipped /
                       failed / timed-out, with the reason; "manual" for a file no race wrote, whose
                       race_id is NULL), fit and embed seconds, validation Top-1/5/10, score and
                       mAP@10, submission file. A race's run has a key unique in its race, so that
                       recording it again (after a Ctrl-C) updates its row instead of adding one
    server_submission  one per attempt to send a run's submission: written *before* sending
                       (state "sending"), then completed with the HTTP status and the server's score
                       (state "scored") or its error text (state "failed"); an attempt still
                       sending when the Leaderboard closes (after a Ctrl-C or an error) is closed
                       as failed, saying why
    run_rankings       a finished race run's rankings, a row a split, written with its run's row
                       (toolkit.records.rankings, which defines it), so that any run can be shown again

Several processes may write at once (a race recording runs while a teammate submits): the file is
in WAL mode with a busy timeout, and every transaction takes the write lock when it begins
(BEGIN IMMEDIATE), so a writer waits for another instead of failing. The schema is created and
upgraded by toolkit.records.migrations. A damaged file, or one SQLite cannot read or write, is a
LeaderboardError naming the file, whether found when it opens (a quick check of every page) or later.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import Index, String, TypeDecorator, delete, event
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from toolkit.machine.interrupts import interrupts_deferred
from toolkit.race.selection import best_run
from toolkit.records.sqlite_file import (BUSY_TIMEOUT_MS, LeaderboardError, begin_immediate, check_pages,
                                         configure_connection, fault, is_fault)
from toolkit.records.migrations import create_or_upgrade
from toolkit.records.provenance import machine_details
from toolkit.records.rankings import RunRankings
from toolkit.retrieval.recipes import Recipe

RUN_STATUSES = ("finished", "skipped", "failed", "timed-out", "manual")
SUBMISSION_STATES = ("sending", "scored", "failed")


def _now() -> datetime:
    return datetime.now(timezone.utc)           # stored in UTC, shown in local time


class RecipeText(TypeDecorator):
    """A post-processing recipe (toolkit.retrieval.recipes.Recipe) in a text column: written as the
    JSON of its steps ({name, params} each), read back as a Recipe, older rows' display text too
    ("dual-softmax(temperature=0.1)"). Text that no longer reads as a recipe comes back as it is."""
    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value.to_record() if isinstance(value, Recipe) else value, sort_keys=True)

    def process_result_value(self, value: str | None, dialect: Any) -> Recipe | str | None:
        if value is None:
            return None
        try:
            return Recipe.from_record(value)
        except (ValueError, KeyError, TypeError):
            return value


class Race(SQLModel, table=True):
    __tablename__ = "race"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(default_factory=_now)
    ended_at: datetime | None = None
    seconds: float | None = None
    budget_seconds: float | None = None
    data_path: str | None = None
    data_fingerprint: str | None = None
    options: str | None = None                 # JSON: seed, held-out fraction, gallery pattern, flip
    host: str | None = None
    cpu: str | None = None
    gpu: str | None = None
    torch_version: str | None = None
    open_clip_version: str | None = None
    git_commit: str | None = None


class Run(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (Index("ix_run_race_key", "race_id", "run_key", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    race_id: int | None = Field(default=None, foreign_key="race.id", index=True)
    run_key: str | None = None                 # unique in its race (toolkit.records.recorder); NULL by hand
    name: str                                  # as a user types it: cnn-zs[image_size=64]
    strategy: str | None = None                # the registry name: cnn-zs
    options: str | None = None                 # JSON
    status: str = "finished"                   # one of RUN_STATUSES
    reason: str | None = None
    notes: str | None = None
    fit_seconds: float | None = None
    embed_seconds: float | None = None
    validation_score: float | None = None
    validation_top1: float | None = None
    validation_top5: float | None = None
    validation_top10: float | None = None
    validation_map_at_10: float | None = None
    validation_queries: int | None = None
    plain_score: float | None = None           # validation without flip TTA or post-processing
    flip_tta: bool | None = None               # flip test-time augmentation, as validation chose
    post_processing: Recipe | str | None = Field(default=None, sa_type=RecipeText)   # the recipe validation chose
    validation_low: float | None = None        # the validation score's bootstrap interval
    validation_high: float | None = None
    chosen: bool | None = None                 # the race's pick as the best run (toolkit.race.selection)
    submission_path: str | None = None
    ended_at: datetime | None = Field(default_factory=_now)


class ServerSubmission(SQLModel, table=True):
    __tablename__ = "server_submission"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    started_at: datetime = Field(default_factory=_now)
    ended_at: datetime | None = None
    url: str
    group_name: str
    state: str = "sending"                     # one of SUBMISSION_STATES
    http_status: int | None = None
    server_score: float | None = None
    error: str | None = None
    tries: int | None = None
    seconds: float | None = None


TABLES = (Race.__table__, Run.__table__, ServerSubmission.__table__, RunRankings.__table__)


@dataclass
class RunSummary:
    """A run with what the server said about it: the best score and the latest attempt."""

    run: Run
    best_scored: ServerSubmission | None
    last_attempt: ServerSubmission | None
    attempts: int

    @property
    def server_score(self) -> float | None:
        return self.best_scored.server_score if self.best_scored else None


class Leaderboard:
    """One leaderboard file. Safe to open from several processes at once."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LeaderboardError(f"{self.path}: cannot create its folder ({error.strerror or error})") from None
        self.engine = create_engine(f"sqlite:///{self.path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(self.engine, "connect", configure_connection)
        event.listen(self.engine, "begin", begin_immediate)
        self._sending: list[ServerSubmission] = []     # attempts started here and not finished yet
        try:
            with interrupts_deferred():     # as in _session: no transaction cut by a Ctrl-C
                check_pages(self.engine, self.path)
                self.schema_version = create_or_upgrade(self.engine, TABLES)
        except (SQLAlchemyError, LeaderboardError) as error:
            self.engine.dispose()
            raise fault(self.path, "open", error) from None
        event.listen(self.engine, "handle_error", self._database_fault)

    def close(self, reason: str = "the toolkit stopped before the server answered") -> None:
        """Close the file; an attempt started here and still sending is closed as failed (`reason`)."""
        try:
            self._abandon_sending(reason)
        finally:
            self.engine.dispose()

    def __enter__(self) -> Leaderboard:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if kind is None:
            self.close()
            return
        try:
            self.close("interrupted before the server answered" if issubclass(kind, KeyboardInterrupt)
                       else f"stopped before the server answered ({kind.__name__})")
        except (LeaderboardError, SQLAlchemyError):
            pass        # the error under way is the one to tell; such an attempt reads "sending?"

    def _database_fault(self, context: Any) -> None:
        """sqlalchemy's handle_error: a damaged or unusable file is a LeaderboardError naming it."""
        if is_fault(context.original_exception):
            raise fault(self.path, "read or write", context.original_exception)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session, with Ctrl-C held until it is closed: every transaction takes the write lock
        (BEGIN IMMEDIATE), and one cut by a KeyboardInterrupt can keep it while the traceback keeps
        its connection, so that the code on the way out, recording what was kept, would wait out
        the busy timeout and then fail with "database is locked"."""
        with interrupts_deferred(), Session(self.engine, expire_on_commit=False) as session:
            yield session

    def _add(self, row: SQLModel) -> Any:
        with self._session() as session:
            session.add(row)
            session.commit()
            session.refresh(row)
            return row

    # --- races -------------------------------------------------------------------------------

    def start_race(self, data_path: str | os.PathLike[str] | None, data_fingerprint: str | None = None,
                   budget_seconds: float | None = None, options: dict | None = None,
                   machine: dict | None = None) -> Race:
        machine = machine_details() if machine is None else machine
        return self._add(Race(data_path=str(data_path) if data_path else None, data_fingerprint=data_fingerprint,
                              budget_seconds=budget_seconds, options=_json(options or {}), **machine))

    def finish_race(self, race_id: int, seconds: float, chosen_run_id: int | None = None) -> None:
        """The race's end time and seconds, and the run it chose as its best."""
        with self._session() as session:
            race = session.get(Race, race_id)
            if race is not None:
                race.ended_at, race.seconds = _now(), seconds
            chosen = session.get(Run, chosen_run_id) if chosen_run_id is not None else None
            if chosen is not None:
                chosen.chosen = True
            session.commit()

    def race(self, race_id: int) -> Race | None:
        with self._session() as session:
            return session.get(Race, race_id)

    def races(self) -> list[Race]:
        with self._session() as session:
            return list(session.exec(select(Race).order_by(Race.id)).all())

    def latest_race(self) -> Race | None:
        with self._session() as session:
            return session.exec(select(Race).order_by(Race.id.desc()).limit(1)).first()

    # --- runs --------------------------------------------------------------------------------

    def add_run(self, **fields: Any) -> Run:
        """Add a run row; `options` may be a dict (stored as JSON)."""
        return self._add(Run(**_run_fields(fields)))

    def record_run(self, race_id: int | None, run_key: str, rankings: dict[str, bytes] | None = None,
                   **fields: Any) -> Run:
        """Record a race's run by its key, with its `rankings` ({split: record}) in the same
        transaction: the row is added the first time and updated after, so recording the same run
        again (a Ctrl-C between the write and hearing of it) adds nothing."""
        fields = _run_fields(fields)
        with self._session() as session:
            row = session.exec(select(Run).where(Run.race_id == race_id, Run.run_key == run_key)).first()
            if row is None:
                row = Run(race_id=race_id, run_key=run_key, **fields)
                session.add(row)
            else:
                for name, value in fields.items():
                    setattr(row, name, value)
                row.ended_at = _now()
            session.flush()
            if rankings:
                session.execute(delete(RunRankings).where(RunRankings.run_id == row.id))
                session.add_all(RunRankings(run_id=row.id, split=split, data=data) for split, data in rankings.items())
            session.commit()
            session.refresh(row)
            return row

    def run_rankings(self, run_id: int) -> dict[str, bytes]:
        """The rankings a race kept for the run ({split: record}); {} for a row without them."""
        with self._session() as session:
            rows = session.exec(select(RunRankings).where(RunRankings.run_id == run_id)).all()
            return {row.split: row.data for row in rows}

    def add_manual_run(self, submission_path: str | os.PathLike[str]) -> Run:
        """A submission file that no race wrote: a run with no race and status "manual"."""
        path = Path(submission_path).resolve()
        return self.add_run(name=path.name, status="manual", submission_path=str(path),
                            reason="submitted by hand, not written by a race")

    def run(self, run_id: int) -> Run | None:
        with self._session() as session:
            return session.get(Run, run_id)

    def run_for_file(self, submission_path: str | os.PathLike[str]) -> Run | None:
        """The latest run whose submission is this file, or None."""
        wanted = str(Path(submission_path).resolve())
        with self._session() as session:
            return session.exec(select(Run).where(Run.submission_path == wanted).order_by(Run.id.desc())).first()

    def runs(self, race_id: int | None = None) -> list[Run]:
        """The runs of one race, or every run (manual ones included) when race_id is None."""
        with self._session() as session:
            query = select(Run).order_by(Run.id)
            if race_id is not None:
                query = query.where(Run.race_id == race_id)
            return list(session.exec(query).all())

    def best_run(self, race_id: int | None = None) -> Run | None:
        """The best run (toolkit.race.selection) of the given race, the latest race by default."""
        if race_id is None:
            latest = self.latest_race()
            if latest is None:
                return None
            race_id = latest.id
        return best_run(self.runs(race_id))

    # --- server submissions ------------------------------------------------------------------

    def start_submission(self, run_id: int, url: str, group: str) -> ServerSubmission:
        """Record an attempt before it is sent, so that nothing is lost if the send never returns;
        one not finished when this Leaderboard closes is closed as failed (see close)."""
        row = ServerSubmission(run_id=run_id, url=url, group_name=group, state="sending")
        self._sending.append(row)                      # before the write: a Ctrl-C during it still finds it
        return self._add(row)

    def finish_submission(self, submission_id: int, state: str, http_status: int | None = None,
                          server_score: float | None = None, error: str | None = None,
                          tries: int | None = None, seconds: float | None = None) -> ServerSubmission:
        if state not in SUBMISSION_STATES:
            raise ValueError(f"state must be one of {SUBMISSION_STATES}, not {state!r}")
        with self._session() as session:
            row = session.get(ServerSubmission, submission_id)
            if row is None:
                raise LeaderboardError(f"{self.path}: no server submission {submission_id}")
            row.state, row.http_status, row.server_score, row.error = state, http_status, server_score, error
            row.tries, row.seconds, row.ended_at = tries, seconds, _now()
            session.commit()
        self._sending = [attempt for attempt in self._sending if attempt.id != submission_id]
        return row

    def _abandon_sending(self, reason: str) -> None:
        """Close as failed the attempts started here that are still "sending" in the file."""
        started = [attempt.id for attempt in self._sending if attempt.id is not None]
        self._sending = []
        if not started:
            return
        error = f"{reason}; the server may still have scored it, so check before sending it again"
        with self._session() as session:
            rows = session.exec(select(ServerSubmission).where(ServerSubmission.id.in_(started),
                                                               ServerSubmission.state == "sending")).all()
            for row in rows:
                row.state, row.error, row.ended_at = "failed", error, _now()
            session.commit()

    def submissions(self, run_ids: Iterable[int] | None = None) -> list[ServerSubmission]:
        with self._session() as session:
            query = select(ServerSubmission).order_by(ServerSubmission.id)
            if run_ids is not None:
                query = query.where(ServerSubmission.run_id.in_(list(run_ids)))
            return list(session.exec(query).all())

    def summaries(self, race_id: int | None = None) -> list[RunSummary]:
        """Runs with their server outcomes, best first: by validation score, then server score."""
        runs = self.runs(race_id)
        by_run: dict[int, list[ServerSubmission]] = {}
        for attempt in self.submissions([run.id for run in runs]):
            by_run.setdefault(attempt.run_id, []).append(attempt)
        summaries = []
        for run in runs:
            attempts = by_run.get(run.id, [])
            scored = [attempt for attempt in attempts if attempt.state == "scored" and attempt.server_score is not None]
            summaries.append(RunSummary(run=run, best_scored=max(scored, key=lambda a: a.server_score, default=None),
                                        last_attempt=attempts[-1] if attempts else None, attempts=len(attempts)))

        def rank(summary: RunSummary) -> tuple:
            validation, server = summary.run.validation_score, summary.server_score
            return (validation is None, -(validation or 0.0), server is None, -(server or 0.0), summary.run.id)
        return sorted(summaries, key=rank)


def open_leaderboard(where: Leaderboard | str | os.PathLike[str] | None) -> Leaderboard | None:
    """A Leaderboard from a path (or the one given, or None)."""
    if where is None or isinstance(where, Leaderboard):
        return where
    return Leaderboard(where)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _run_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(fields.get("options"), (str, type(None))):
        fields = {**fields, "options": _json(fields["options"])}
    return fields
