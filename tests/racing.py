"""Tests race through this: registry specs or Strategy objects, RaceConfig fields as keywords."""
from __future__ import annotations

from strategies import Strategy, create_strategy
from toolkit.race.config import RaceConfig
from toolkit.race.runner import run_race


def race(competition, specs, leaderboard=None, observer=None, **config):
    """run_race over (name, options) specs or Strategy objects, with RaceConfig(**config)."""
    strategies = [spec if isinstance(spec, Strategy) else create_strategy(spec[0], **spec[1]) for spec in specs]
    return run_race(competition, strategies, RaceConfig(**config), leaderboard=leaderboard, observer=observer)
