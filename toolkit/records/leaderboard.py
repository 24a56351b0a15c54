"""The leaderboard: every race, every strategy run and every server submission, in one SQLite file.

Three tables (sqlmodel):

    race               one per `invoke race`: start and end, budget, data path and fingerprint,
                       machine (CPU, GPU), torch / open_clip versions, git commit, split options
    run                one per strategy run: name, options (JSON), status (finished / skipped /
                       failed / timed-out, with the reason; "manual" for a file no race wrote, whose
                       race_id is NULL), fit and embed seconds, validation Top-1/5/10, score and
                       mAP@10, submission file
    server_submission  one per attempt to send a run's submission: written *before* sending
                       (state "sending"), then completed with the HTTP status and the server's score
                       (state "scored") or its error text (state "failed")

Several processes may write at once (a race recording runs while a teammate submits): the file is
in WAL mode with a busy timeout, and every transaction takes the write lock when it begins
(BEGIN IMMEDIATE), so a writer waits for another instead of failing.

The schema is created on first use and upgraded in place, never losing rows: missing tables are
created, missing columns are added with ALTER TABLE (NULL in older rows), and PRAGMA user_version
records SCHEMA_VERSION. Changes are additive only (no column is removed or renamed), so an older
toolkit can still read and write a newer file.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.markup import escape
from rich.table import Table
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

SCHEMA_VERSION = 2   # 2: run.flip_tta, run.post_processing, run.plain_score
BUSY_TIMEOUT_MS = 30_000
RUN_STATUSES = ("finished", "skipped", "failed", "timed-out", "manual")
SUBMISSION_STATES = ("sending", "scored", "failed")
PROJECT = Path(__file__).resolve().parents[1]


def _now() -> datetime:
    return datetime.now(timezone.utc)           # stored in UTC, shown in local time


class LeaderboardError(RuntimeError):
    """The leaderboard file cannot be opened, or a run asked for is not in it."""


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

    id: int | None = Field(default=None, primary_key=True)
    race_id: int | None = Field(default=None, foreign_key="race.id", index=True)
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
    post_processing: str | None = None         # re-ranking recipe validation chose (toolkit.retrieval.rerank)
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


TABLES = (Race.__table__, Run.__table__, ServerSubmission.__table__)


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
        event.listen(self.engine, "connect", _configure_connection)
        event.listen(self.engine, "begin", _begin_immediate)
        try:
            self.schema_version = _create_or_upgrade(self.engine)
        except SQLAlchemyError as error:
            self.engine.dispose()
            reason = getattr(error, "orig", None) or error
            raise LeaderboardError(f"{self.path}: cannot open the leaderboard ({reason})") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Leaderboard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

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

    def finish_race(self, race_id: int, seconds: float) -> None:
        with self._session() as session:
            race = session.get(Race, race_id)
            if race is not None:
                race.ended_at, race.seconds = _now(), seconds
                session.commit()

    def race(self, race_id: int) -> Race | None:
        with self._session() as session:
            return session.get(Race, race_id)

    def latest_race(self) -> Race | None:
        with self._session() as session:
            return session.exec(select(Race).order_by(Race.id.desc()).limit(1)).first()

    # --- runs --------------------------------------------------------------------------------

    def add_run(self, **fields: Any) -> Run:
        """Record a run; `options` may be a dict (stored as JSON)."""
        if not isinstance(fields.get("options"), (str, type(None))):
            fields["options"] = _json(fields["options"])
        return self._add(Run(**fields))

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
        """The finished run with a submission and the highest validation score, in the given race
        (the latest race by default)."""
        if race_id is None:
            latest = self.latest_race()
            if latest is None:
                return None
            race_id = latest.id
        candidates = [run for run in self.runs(race_id)
                      if run.status == "finished" and run.submission_path and run.validation_score is not None]
        return max(candidates, key=lambda run: (run.validation_score, run.id), default=None)

    # --- server submissions ------------------------------------------------------------------

    def start_submission(self, run_id: int, url: str, group: str) -> ServerSubmission:
        """Record an attempt before it is sent, so that nothing is lost if the send never returns."""
        return self._add(ServerSubmission(run_id=run_id, url=url, group_name=group, state="sending"))

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
            return row

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


# --- recording a race as it goes --------------------------------------------------------------


class RaceRecorder:
    """Records one race into a leaderboard: the race row when it starts, each run as it ends (so a
    crash later loses nothing). A leaderboard problem is a warning, never the end of the race."""

    def __init__(self, leaderboard: Leaderboard | str | os.PathLike[str] | None, data: Any,
                 budget_seconds: float | None, options: dict):
        self.board: Leaderboard | None = None
        self.owned = not isinstance(leaderboard, Leaderboard)
        self.race_id: int | None = None
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
        score = run.validation
        try:
            record = self.board.add_run(
                race_id=self.race_id, name=run.label, strategy=run.strategy, options=run.options,
                status=run.status, reason=run.reason or None, notes=_notes(run),
                fit_seconds=run.fit_seconds, embed_seconds=run.embed_seconds,
                validation_score=score.score if score else None, validation_top1=score.top1 if score else None,
                validation_top5=score.top5 if score else None, validation_top10=score.top10 if score else None,
                validation_map_at_10=score.map_at_10 if score else None,
                validation_queries=score.queries if score else None,
                plain_score=run.baseline.score if getattr(run, "baseline", None) else None,
                flip_tta=getattr(run, "flip_tta", None) if score else None,
                post_processing=getattr(run, "post_processing", None) if score else None,
                submission_path=str(Path(run.submission).resolve()) if run.submission else None)
            run.run_id = record.id
        except (LeaderboardError, SQLAlchemyError, OSError) as error:
            self._warn(error)

    def race_ended(self, seconds: float) -> None:
        if self.board is None:
            return
        try:
            if self.race_id is not None:
                self.board.finish_race(self.race_id, seconds)
        except (LeaderboardError, SQLAlchemyError, OSError) as error:
            self._warn(error)
        finally:
            if self.owned:
                self.board.close()

    def _warn(self, error: Exception) -> None:
        from toolkit.machine.console import warn
        where = self.board.path if self.board else "the leaderboard"
        warn(f"not recorded in {where}: {getattr(error, 'orig', None) or error}")


# --- what a race row says about the machine and the data --------------------------------------


def machine_details() -> dict[str, str | None]:
    """Host, CPU and GPU names, torch and open_clip versions, the git commit of the toolkit."""
    return {"host": platform.node() or None, "cpu": _cpu_name(), "gpu": _gpu_name(),
            "torch_version": _version("torch"), "open_clip_version": _version("open_clip_torch"),
            "git_commit": _git_commit()}


def data_fingerprint(data: Any) -> str:
    """A short hash of a competition's file names and sizes (cheap: no image is read)."""
    root = Path(data.root)
    digest = hashlib.sha1()
    for role, paths in (("training", [image.path for image in data.training]),
                        ("query", data.queries), ("gallery", data.gallery)):
        for path in sorted(Path(path) for path in paths):
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            digest.update(f"{role}\0{_relative(path, root)}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _gpu_name() -> str | None:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no torch, or a broken driver: the race row just has no GPU
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _notes(run: Any) -> str | None:
    return "; ".join(run.notes) or None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --- the database file ---------------------------------------------------------------------------


def _configure_connection(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None        # transactions are begun by _begin_immediate
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    # Take the write lock at the start: a deferred transaction that reads, then writes, can fail at
    # once with SQLITE_BUSY under WAL when another process wrote in between; this one waits.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_or_upgrade(engine: Any) -> int:
    """Create missing tables, add missing columns and indexes, record the schema version."""
    with engine.begin() as connection:          # one process at a time (BEGIN IMMEDIATE)
        found = connection.exec_driver_sql("PRAGMA user_version").scalar() or 0
        SQLModel.metadata.create_all(connection, tables=list(TABLES))
        for table in TABLES:
            present = {row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=connection.dialect)
                    connection.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}')
            for index in table.indexes:
                index.create(connection, checkfirst=True)
        if found < SCHEMA_VERSION:
            connection.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return max(found, SCHEMA_VERSION)


# --- display ---------------------------------------------------------------------------------------


def leaderboard_table(summaries: Sequence[RunSummary], title: str) -> Table:
    """Runs best first, validation score beside server score (does local validation predict it?)."""
    table = Table(title=escape(title))
    left = ("strategy", "status", "post-processing", "submission / reason")
    for column in ("run", "race", "strategy", "status", "val score", "server", "plain", "post-processing", "Top1",
                   "Top5", "Top10", "mAP@10", "fit s", "embed s", "sends", "submission / reason"):
        table.add_column(column, justify="left" if column in left else "right", no_wrap=column == "strategy",
                         overflow="fold" if column == "submission / reason" else "ellipsis")
    best_validation = max((s.run.validation_score for s in summaries if s.run.validation_score is not None), default=None)
    for summary in summaries:
        run = summary.run
        validation = [_number(run.validation_score, 1), _server_cell(summary), _number(run.plain_score, 1),
                      escape(post_processing_text(run)), _number(run.validation_top1, 3),
                      _number(run.validation_top5, 3), _number(run.validation_top10, 3),
                      _number(run.validation_map_at_10, 3)]
        detail = Path(run.submission_path).name if run.submission_path else _shorten(run.reason or "", 100)
        last = summary.last_attempt
        if last is not None and last.state == "failed" and summary.best_scored is None and last.error:
            detail += f" (last send failed: {_shorten(last.error, 120)})"
        style = ("bold green" if best_validation is not None and run.validation_score == best_validation
                 else "red" if run.status in ("failed", "timed-out") else None)
        table.add_row(str(run.id), str(run.race_id) if run.race_id is not None else "-", escape(run.name), run.status,
                      *validation, _number(run.fit_seconds, 1), _number(run.embed_seconds, 1),
                      str(summary.attempts), escape(detail), style=style)
    return table


def post_processing_text(run: Run) -> str:
    """'flip + dual-softmax(temperature=0.1)', 'none', or '-' when unknown (older rows)."""
    if run.flip_tta is None and run.post_processing is None:
        return "-"
    parts = (["flip"] if run.flip_tta else []) + ([run.post_processing] if run.post_processing not in (None, "none") else [])
    return " + ".join(parts) or "none"


def race_title(race: Race) -> str:
    parts = [f"race {race.id}", _local_time(race.started_at)]
    if race.data_path:
        parts.append(race.data_path)
    if race.budget_seconds:
        parts.append(f"budget {race.budget_seconds / 60:g} min")
    if race.git_commit:
        parts.append(f"commit {race.git_commit[:8]}")
    return ", ".join(parts)


def _local_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _server_cell(summary: RunSummary) -> str:
    if summary.server_score is not None:
        return f"{summary.server_score:.1f}"
    last = summary.last_attempt
    if last is None:
        return "-"
    return "sending?" if last.state == "sending" else "failed"
