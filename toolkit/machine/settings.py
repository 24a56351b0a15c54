"""Settings a team sets once: the competition server's URL, the group name, the leaderboard file.

Sources, later ones winning: defaults < `retrieval-race.toml` in the project folder (or the file
named by RETRIEVAL_RACE_CONFIG) < environment variables < command-line options (passed to
`load_settings(**overrides)`; None means "not given").

    # retrieval-race.toml
    server_url = "http://tatooine.disi.unitn.it:3001/retrieval/"
    group = "our-team"
    leaderboard = "leaderboard.db"

Environment: RETRIEVAL_RACE_URL, RETRIEVAL_RACE_GROUP, RETRIEVAL_RACE_LEADERBOARD.

The project folder (`project_root`) is decided here, once: every default path (data/,
submissions/, reports/, the leaderboard file, a relative path in the settings) is in it, wherever
the command runs; a path typed on the command line is taken as typed.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

CONFIG_NAME = "retrieval-race.toml"
PROJECT_MARKERS = (CONFIG_NAME, "tasks.py")      # what marks the project folder
ENVIRONMENT = {"server_url": "RETRIEVAL_RACE_URL", "group": "RETRIEVAL_RACE_GROUP",
               "leaderboard": "RETRIEVAL_RACE_LEADERBOARD"}


class SettingsError(ValueError):
    """A configuration file that cannot be read or holds unknown keys."""


@dataclass(frozen=True)
class Settings:
    server_url: str | None = None
    group: str | None = None
    leaderboard: Path = Path("leaderboard.db")
    source: str = "defaults"          # where the last value came from, for messages


def project_root(start: Path | None = None) -> Path:
    """The project folder: the nearest folder at or above `start` (the working folder) that holds
    retrieval-race.toml or tasks.py (invoke finds tasks.py the same way); the working folder itself
    when none does."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return here


def project_path(path: str | os.PathLike, project: Path | None = None) -> Path:
    """A default or a setting's path: an absolute one as it is, a relative one in the project folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (project or project_root()) / path


def config_path(project: Path | None = None) -> Path:
    named = os.environ.get("RETRIEVAL_RACE_CONFIG")
    return Path(named) if named else (project or project_root()) / CONFIG_NAME


def leaderboard_file(option: str | os.PathLike | None = None, project: Path | None = None) -> Path:
    """--leaderboard PATH as typed; else the setting `leaderboard` (a relative one in the project folder).
    Raises SettingsError for a settings file that cannot be read."""
    if option:
        return Path(option)
    return project_path(load_settings(project).leaderboard, project)


def load_settings(project: Path | None = None, **overrides: object) -> Settings:
    settings = Settings()
    known = {field.name for field in fields(Settings)} - {"source"}
    path = config_path(project)
    if path.is_file():
        try:
            values = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SettingsError(f"{path}: not valid TOML ({error})") from None
        unknown = sorted(set(values) - known)
        if unknown:
            raise SettingsError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        settings = replace(settings, **_typed(values), source=str(path))
    from_environment = {name: os.environ[variable] for name, variable in ENVIRONMENT.items()
                        if os.environ.get(variable)}
    if from_environment:
        settings = replace(settings, **_typed(from_environment), source="environment")
    given = {name: value for name, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise SettingsError(f"unknown settings {unknown}; known: {sorted(known)}")
    if given:
        settings = replace(settings, **_typed(given), source="command line")
    return settings


def _typed(values: dict) -> dict:
    return {name: Path(value) if name == "leaderboard" else value for name, value in values.items()}
