"""Every table and line a person reads, built from plain data and fitted to the terminal's width:
the race (live and when done), the leaderboard, the doctor, the strategies, a submission's score."""
from toolkit.views.live import RaceView, race_view_table
from toolkit.views.race import race_table

__all__ = ["RaceView", "race_table", "race_view_table"]
