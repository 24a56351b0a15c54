"""The leaderboard's SQLite file: how a connection is set up (WAL, a busy timeout, transactions
that take the write lock when they begin), the check of its pages when it opens, and the one line
for a file that cannot be opened, read or written."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_MS = 30_000


class LeaderboardError(RuntimeError):
    """The leaderboard file cannot be opened, or a run asked for is not in it."""


def configure_connection(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None        # transactions are begun by begin_immediate
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Switching a new file to WAL takes an exclusive lock without SQLite's busy handler: two
    # processes opening one new file at once got "database is locked"; so retry for the timeout.
    give_up = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > give_up:
                raise
            time.sleep(0.02)
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def check_pages(engine: Any, path: Path) -> None:
    """SQLite's quick check of every page, so that damage is found when the file opens rather than
    halfway through a table; raise LeaderboardError naming the first problems."""
    with engine.connect() as connection:
        problems = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise damaged(path, "open", "; ".join(" ".join(problem.split()) for problem in problems[:3]))


def is_fault(error: BaseException) -> bool:
    """A file SQLite finds damaged (DatabaseError) or cannot use (OperationalError: locked past the
    busy timeout, disk full or read-only, I/O error); constraint and programming errors stay bugs."""
    return type(error) is sqlite3.DatabaseError or isinstance(error, sqlite3.OperationalError)


def fault(path: Path, doing: str, error: BaseException) -> LeaderboardError:
    """The one line for a file that cannot be opened, read or written."""
    if isinstance(error, LeaderboardError):
        return error
    reason = getattr(error, "orig", None) or error
    if type(reason) is sqlite3.DatabaseError:
        return damaged(path, doing, str(reason))
    return LeaderboardError(f"{path}: cannot {doing} the leaderboard ({reason})")


def damaged(path: Path, doing: str, detail: str) -> LeaderboardError:
    return LeaderboardError(f"{path}: cannot {doing} the leaderboard: the file is damaged or not a leaderboard "
                            f"({detail}); move it aside to start a new one (sqlite3's .recover can save its rows)")


def begin_immediate(connection: Any) -> None:
    # Take the write lock at the start: a deferred transaction that reads, then writes, can fail at
    # once with SQLITE_BUSY under WAL when another process wrote in between; this one waits.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
