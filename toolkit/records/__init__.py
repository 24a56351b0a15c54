"""The records of every race: the leaderboard store, its migrations, the recorder the race calls."""
