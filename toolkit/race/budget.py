"""The race's clock: a budget stated once, the order strategies run in, and what each may spend.

    budget = Budget(3600)                        # started now; Budget(None): no limit
    budget.left()                                # seconds until the budget ends
    budget.fit_deadline(reserve)                 # a training loop stops here, leaving `reserve`
    with hard_stop(budget.end): ...              # raises OutOfTime in this code at that moment

The timeline of a race with a budget B:

    0 ........ strategies (each skipped when its estimate exceeds the time left) ........ B
    B ... ensembles (until B + 2%) ... the final write: best copy, race row (until B + 3%)

A strategy's training loop gets `fit_deadline(reserve)`: the budget's end less the time the
strategy still needs after training (embedding the validation split and the test set at its own
embedding speed, choosing post-processing, writing its submission). A strategy still running when
the budget ends is stopped there (`hard_stop`, SIGALRM in the main thread) and recorded as
timed-out; one that finishes late but finishes is kept.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from toolkit.machine.interrupts import stops_unwrapped

FINAL_WRITE_FRACTION = 0.03     # the race may end this fraction of the budget late: the final write
ENSEMBLE_FRACTION = 0.02        # of which ensembles may use this much; the rest is for writing files
WRITE_SECONDS = 1.0             # choosing post-processing and writing one submission, beyond embedding
RESERVE_MARGIN = 1.1            # embedding estimates are nominal: keep 10% more than they say


class OutOfTime(BaseException):
    """Raised by hard_stop when the time is up. A BaseException, like KeyboardInterrupt, so that a
    strategy's own `except Exception` cannot swallow it."""


@dataclass
class Budget:
    """A wall-clock budget in seconds (None: unlimited), counted from `started` (time.monotonic)."""

    seconds: float | None
    started: float = field(default_factory=time.monotonic)

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    @property
    def end(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    @property
    def ensemble_end(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds * (1 + ENSEMBLE_FRACTION)

    @property
    def final_end(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds * (1 + FINAL_WRITE_FRACTION)

    def used(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds until the budget ends (negative once past it; infinite without a budget)."""
        return math.inf if self.end is None else self.end - time.monotonic()

    def fit_deadline(self, reserve: float) -> float | None:
        """When a training loop must stop: the budget's end less `reserve` seconds, or None."""
        return None if self.end is None else self.end - reserve

    def describe(self) -> str:
        if self.seconds is None:
            return f"{self.used():.0f} s used (no budget)"
        return f"{self.used():.0f} s used, {max(self.left(), 0):.0f} s left of {self.seconds:g} s"


def images_after_fit(validation_images: int, test_images: int, flip_tta: bool | None) -> int:
    """Forward passes a strategy makes once fitted: the validation images plain, and mirrored
    unless flip is off (both from one decoded batch); then the test set, plain, and mirrored unless
    flip is off (at most: validation may choose plain)."""
    validation_passes = {False: 1, True: 2, None: 2}[flip_tta]
    test_passes = 1 if flip_tta is False else 2
    return validation_passes * validation_images + test_passes * test_images


def reserve_seconds(embedding_seconds: float) -> float:
    """Time to keep after a training loop: the embedding estimate with a margin, and the writing."""
    return RESERVE_MARGIN * embedding_seconds + WRITE_SECONDS


def schedule(entries: Sequence, trains, estimate) -> list:
    """Cheap zero-shot strategies first, then trained ones, each group by estimated cost; entries
    with equal keys keep their order. `trains(entry)` -> bool, `estimate(entry)` -> seconds or None
    (unknown: last in its group)."""
    def key(entry) -> tuple[bool, float]:
        seconds = estimate(entry)
        return bool(trains(entry)), math.inf if seconds is None else seconds
    return sorted(entries, key=key)


# --- stopping on time ---------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def hard_stop(at: float | None) -> Iterator[None]:
    """Raise OutOfTime inside the block when time.monotonic() reaches `at` (None: never).

    Uses SIGALRM, so it works in the main thread on Unix; elsewhere the block runs unbounded and
    the race only checks the time after it. A long C call (one forward pass) finishes first."""
    if at is None or not _in_main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def out_of_time(signum, frame):
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, out_of_time)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(at - time.monotonic(), 1e-3))
        with stops_unwrapped():     # OutOfTime even where Python or a library wrapped it in an error
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous is None else previous)
