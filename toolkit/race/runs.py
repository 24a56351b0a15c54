"""What a race produces and reports as it goes: each strategy's run, the race's result, the
interruption that carries it, and the observer a view implements to show the race live."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from toolkit.race.config import NOTHING_RACED
from toolkit.race.selection import best_run
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.metrics import RetrievalScore
from toolkit.retrieval.recipes import PLAIN, Recipe

RUNNING = ("estimating", "fitting", "embedding")


@dataclass
class RunVectors:
    """A finished run's embeddings, with the flip setting its validation chose: what ensembles fuse."""
    validation: list[Embeddings]       # each validation fold's queries then gallery
    test: Embeddings                   # test queries then gallery


@dataclass
class StrategyRun:
    label: str
    status: str = "queued"             # queued / estimating / fitting / embedding, then
                                       # finished / skipped / failed / timed-out
    reason: str = ""
    validation: RetrievalScore | None = None
    submission: Path | None = None
    fit_seconds: float = 0.0
    embed_seconds: float = 0.0
    post_processing: Recipe = PLAIN    # the post-processing recipe validation chose
    flip_tta: bool | None = False      # whether validation chose flip TTA (None: an ensemble of both)
    baseline: RetrievalScore | None = None   # validation without flip or post-processing
    notes: list[str] = field(default_factory=list)
    strategy: str = ""                 # the registry name and options the run was created with
    options: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None          # its row in the leaderboard, when one is kept
    estimate: float | None = None      # seconds, from Strategy.estimate before it started
    deadline: float | None = None      # the deadline its fit() was given (time.monotonic)
    started: float | None = None       # time.monotonic() when it started and ended
    ended: float | None = None
    vectors: RunVectors | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict, repr=False)   # what fit() measured
    trains: bool = False               # a trained strategy (ranks as less simple than a zero-shot one)
    interval: tuple[float, float] | None = None   # the validation score's bootstrap interval
    chosen: bool = False               # the race's pick (toolkit.race.selection.choose_best)

    @property
    def validation_score(self) -> float | None:
        """The validation score, named as the leaderboard's run rows name it."""
        return None if self.validation is None else self.validation.score

    @property
    def submission_path(self) -> Path | None:
        return self.submission

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


@dataclass
class RaceResult:
    runs: list[StrategyRun]
    yardstick: Any                     # the validation folds the runs were scored on (race.validation)
    seconds: float = 0.0
    race_id: int | None = None         # its row in the leaderboard, when one is kept
    budget_seconds: float | None = None
    best_submission: Path | None = None   # the copy of the best run's submission (<time>-best.json)
    interrupted: bool = False

    @property
    def split(self) -> Any:
        """The first validation fold (the only one unless identities are few)."""
        return self.yardstick.folds[0]

    @property
    def best(self) -> StrategyRun | None:
        return best_run(self.runs)

    @property
    def kept(self) -> str:
        """What a Ctrl-C leaves of the race, as the command says it."""
        return f"best so far written to {self.best_submission}" if self.best_submission else NOTHING_RACED


class RaceInterrupted(KeyboardInterrupt):
    """Ctrl-C during a race, raised once the finished results and the best so far are written."""

    def __init__(self, result: RaceResult):
        super().__init__("race interrupted")
        self.result = result


class RaceObserver:
    """What the race tells whoever shows it (toolkit.views implements one for the terminal). The
    race calls these and nothing else to be seen; this base shows nothing."""

    @contextmanager
    def watching(self, runs: Sequence[StrategyRun], budget: Any) -> Iterator[None]:
        yield

    def roles(self, gallery_pattern: str | None, detected: bool) -> None:
        """Which validation roles the race uses (a detected or given pattern, or random)."""

    def split(self, yardstick: Any) -> None:
        """The validation folds and the choice split are made (toolkit.race.validation.Yardstick)."""

    def started(self, run: StrategyRun) -> None:
        """A strategy starts fitting."""

    def ended(self, run: StrategyRun) -> None:
        """A run ended (finished, skipped, failed or timed-out); run.reason says why."""

    def failed(self, run: StrategyRun, reason: str, trace: str | None) -> None:
        """A strategy raised: the reason, and the traceback unless it is only missing weights."""

    def unreadable(self, what: str, files: Sequence[tuple[Path, str]]) -> None:
        """Images that could not be read (`what`: training or test), with the reasons."""

    def note(self, text: str) -> None:
        """Anything else worth a line."""
