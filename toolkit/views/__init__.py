"""Every table and line a person reads, built from plain data and fitted to the width it is printed
at (toolkit.views.fit): the race (live and when done), the leaderboard, the doctor, the strategies,
a submission's score, the progress bars.

The package imports none of its modules, so that a lower layer (toolkit.retrieval.embed) can take
its progress bar from toolkit.views.progress without importing the race's views."""
