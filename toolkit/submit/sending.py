"""What `invoke submit` sends: the file or run it was asked for, checked before it goes.

A run's file is checked against the competition's query and gallery names when the race's data
folder is on this machine, else for its structure only (each query, 10 unique names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.data.dataset import LayoutError, find_competition
from toolkit.records.store import Leaderboard, Run
from toolkit.submit.submission import validate_submission, validate_submission_structure


class NothingToSend(ValueError):
    """The file or run asked for does not exist or has no submission file."""


def submission_source(board: Leaderboard, file: str | None, best: bool, run_id: int | None) -> tuple[Run | None, Path]:
    """(run or None, file) of what was asked for: a FILE, the best run of the latest race, or run ID."""
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise NothingToSend(f"{file}: no such submission file")
        return board.run_for_file(path), path
    if best:
        record = board.best_run()
        if record is None:
            raise NothingToSend(f"no finished run with a submission in the latest race of {board.path}; "
                                "run invoke race first, or pass --file FILE")
    else:
        record = board.run(run_id)
        if record is None:
            raise NothingToSend(f"no run {run_id} in {board.path}; invoke leaderboard --all lists the runs")
    if not record.submission_path:
        reason = f": {record.reason}" if record.reason else ""
        raise NothingToSend(f"run {record.id} ({record.name}) has no submission file; it {record.status}{reason}")
    path = Path(record.submission_path)
    if not path.is_file():
        raise NothingToSend(f"run {record.id}'s submission file {path} is gone")
    return record, path


def check_before_sending(board: Leaderboard, record: Run | None, submission: dict[str, Any]) -> str:
    """Validate (raising SubmissionError) and say how thoroughly it could be checked."""
    race = board.race(record.race_id) if record is not None and record.race_id is not None else None
    if race is not None and race.data_path and Path(race.data_path).is_dir():
        try:
            data = find_competition(race.data_path)
        except LayoutError:
            data = None
        if data is not None:
            validate_submission(submission, [path.name for path in data.queries], [path.name for path in data.gallery])
            return f"checked against the queries and gallery of {data.root}"
    validate_submission_structure(submission)
    return "structure checked; the competition's file names are not known here"


def check_settings(settings) -> None:
    """Raise NothingToSend naming the setting to give when the server URL or the group is missing."""
    if not settings.server_url:
        raise NothingToSend("no server URL: pass --url URL, set RETRIEVAL_RACE_URL, or write "
                            'server_url = "http://<host>:3001/retrieval/" in retrieval-race.toml')
    if not settings.group:
        raise NothingToSend('no group name: pass --group NAME, set RETRIEVAL_RACE_GROUP, or write group = "<team>" '
                            "in retrieval-race.toml")
