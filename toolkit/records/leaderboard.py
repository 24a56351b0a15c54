"""The leaderboard's public names in one place, for the modules that import them from here.

The code lives by job: the store (tables, queries and writes) in toolkit.records.store, the schema
upgrades in toolkit.records.migrations, the race's recorder in toolkit.records.recorder, machine
and data details in toolkit.records.provenance. The tables a person reads are in
toolkit.views.leaderboard; the names leaderboard_table, race_title and post_processing_text are
still found here (loaded from there on first use) until their importers move.
"""
from __future__ import annotations

from typing import Any

from toolkit.records.migrations import SCHEMA_VERSION
from toolkit.records.provenance import data_fingerprint, machine_details
from toolkit.records.recorder import RaceRecorder, run_fields
from toolkit.records.store import (BUSY_TIMEOUT_MS, RUN_STATUSES, SUBMISSION_STATES, TABLES, Leaderboard,
                                   LeaderboardError, Race, Run, RunSummary, ServerSubmission, open_leaderboard)

__all__ = ["BUSY_TIMEOUT_MS", "RUN_STATUSES", "SCHEMA_VERSION", "SUBMISSION_STATES", "TABLES", "Leaderboard",
           "LeaderboardError", "Race", "RaceRecorder", "Run", "RunSummary", "ServerSubmission", "data_fingerprint",
           "machine_details", "open_leaderboard", "run_fields"]

_MOVED_TO_VIEWS = {"leaderboard_table": "toolkit.views.leaderboard", "race_title": "toolkit.views.leaderboard",
                   "post_processing_text": "toolkit.views.text"}


def __getattr__(name: str) -> Any:
    """The display names that moved to toolkit.views, imported only when asked for (records renders nothing)."""
    if name in _MOVED_TO_VIEWS:
        import importlib
        return getattr(importlib.import_module(_MOVED_TO_VIEWS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
