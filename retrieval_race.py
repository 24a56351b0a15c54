"""retrieval-race from Python, e.g. a notebook: the race and the leaderboard of the command line,
with its defaults (toolkit.race.config) and its files (the project folder: toolkit.machine.settings).

    from retrieval_race import race, leaderboard
    result = race("data/comp", strategies="face-zs,cnn-zs", budget="30m")
    result                      # the race's runs, best first: a table in a notebook
    result.rows                 # a pandas DataFrame when pandas is importable, else a list of dicts
    result.best_submission      # the best run's submission file, to send with invoke submit
    leaderboard()               # the latest race; leaderboard(all=True): every run

Like tasks.py it sits above strategies/ and toolkit/ (imports run that way): it turns strategy
names into strategies and hands them to toolkit.race.runner.run_race.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from strategies import create_strategy, parse_strategy_specs
from toolkit.data.dataset import CompetitionData, check_gallery_pattern, find_competition
from toolkit.machine.settings import leaderboard_file
from toolkit.notebook import LeaderboardView, leaderboard_view
from toolkit.race.config import DEFAULT_STRATEGIES, RaceConfig, race_config
from toolkit.records.store import Leaderboard

__all__ = ["race", "leaderboard", "prepare_race"]


def prepare_race(data: str | os.PathLike, strategies: str, config: RaceConfig,
                 option: str = "--gallery-pattern") -> tuple[CompetitionData, list]:
    """The competition and the strategies a race needs, checked before anything runs: raises
    ValueError (LayoutError for the data) with one line."""
    racers = [create_strategy(name, **options) for name, options in parse_strategy_specs(strategies)]
    competition = find_competition(Path(data))
    check_gallery_pattern(competition, config.gallery_pattern, option)
    return competition, racers


def race(data: str | os.PathLike, strategies: str = DEFAULT_STRATEGIES, budget: str | float | None = None, *,
         seed: int = RaceConfig.seed, flip: str = "auto", workers: int | None = None,
         gallery_pattern: str | None = RaceConfig.gallery_pattern, held_out: float = RaceConfig.held_out_fraction,
         submissions: str | os.PathLike | None = None, rerank: bool = RaceConfig.post_process,
         leaderboard: str | os.PathLike | None = None, show_progress: bool = RaceConfig.show_progress,
         **config: Any) -> LeaderboardView:
    """Race `strategies` (names with options, as for invoke race) on the competition folder `data`
    under `budget` ('30m', '1h30m', or seconds as a number; None: no limit), as `invoke race` does
    and with its defaults; recorded in the leaderboard file (None: the setting `leaderboard`).
    Returns the race's runs, best first, and the best submission's path. `config`: other
    RaceConfig fields (ensemble_size=0, max_folds=1, cache_dir=...). A Ctrl-C keeps what finished."""
    from toolkit.race.runner import RaceInterrupted, run_race
    from toolkit.views.race_console import RaceConsole

    settings = race_config(budget, seed, flip, workers, gallery_pattern, held_out, submissions, rerank, flags=False,
                           show_progress=show_progress, **config)
    competition, racers = prepare_race(data, strategies, settings, option="gallery_pattern")
    board_file = leaderboard_file(leaderboard)
    notes = []
    try:
        result = run_race(competition, racers, settings, leaderboard=board_file, observer=RaceConsole(live=show_progress))
    except RaceInterrupted as interrupted:
        result = interrupted.result
        notes.append("interrupted: the runs that finished are kept")
    with Leaderboard(board_file) as board:
        return leaderboard_view(board, result.race_id, best_submission=result.best_submission, notes=notes)


def leaderboard(race: int | None = None, all: bool = False,  # noqa: A002 (as invoke leaderboard --all)
                leaderboard: str | os.PathLike | None = None) -> LeaderboardView:
    """The runs of a race (None: the latest) or of every race (`all`), best first, as invoke leaderboard
    lists them; the leaderboard file as there (None: the setting `leaderboard`)."""
    with Leaderboard(leaderboard_file(leaderboard)) as board:
        return leaderboard_view(board, race, all_runs=all)
