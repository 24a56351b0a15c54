"""One strategy of a race, on a cluster worker: the Ray actor's class (toolkit.race.cluster makes
it one), a plain class so that it also runs in process.

    worker = StrategyWorker(strategy, root, manifest, config, budget_seconds, budget_started_at,
                            validation_names)     # Race.validation_paths, relative to root
    worker.needs_data() -> bool; worker.receive(blob)   # the images, when this machine lacks them
    worker.estimate()            -> RunState             # its estimate, or why it cannot run
    worker.fit_and_validate()    -> WorkerValidation     # fitted, validation embedded plain and mirrored
    worker.embed_test(flip)      -> WorkerTest           # the test set at the flip the driver chose

The worker builds the same race as the driver (the competition, then the yardstick from the same
seed: its files are checked against the driver's), with no leaderboard and nothing shown, and
runs the race's own steps (Race.estimate, fit, embed, embed_test). It keeps its own embedding
cache: the driver's folder when this machine has it, else this machine's default. Its paths are
given back in the driver's terms.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit.data.dataset import find_competition
from toolkit.race.budget import Budget
from toolkit.race.config import RaceConfig
from toolkit.race.remote import Manifest, Precomputed, present, rebased, relative_names, unpack
from toolkit.race.runner import Race, make_yardstick
from toolkit.race.runs import RaceObserver, StrategyRun
from toolkit.records.recorder import RaceRecorder


@dataclass
class RunState:
    """What a worker's run has become, for the driver's copy of it (notes: only the new ones)."""
    status: str
    reason: str = ""
    estimate: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = 0.0
    embed_seconds: float = 0.0
    deadline_in: float | None = None      # seconds from when it was sent to the fit's deadline

    def apply(self, run: StrategyRun) -> None:
        run.status, run.reason, run.estimate = self.status, self.reason, self.estimate
        run.notes.extend(self.notes)
        run.details.update(self.details)
        run.fit_seconds, run.embed_seconds = self.fit_seconds, self.embed_seconds
        if self.deadline_in is not None:
            run.deadline = time.monotonic() + self.deadline_in


@dataclass
class WorkerValidation:
    encoders: list[Precomputed]           # one per fit: validation's images, by flip
    state: RunState


@dataclass
class WorkerTest:
    test: Any                             # Embeddings of the test queries then gallery
    report: str
    state: RunState


class StrategyWorker:
    def __init__(self, strategy, root: str, manifest: Manifest, config: RaceConfig, budget_seconds: float | None,
                 budget_started_at: float, validation_names: list[str]):
        self.strategy, self.manifest, self.validation_names = strategy, manifest, validation_names
        self.driver_root = self.root = Path(root)
        cache = config.cache_dir if config.cache_dir is not None and Path(config.cache_dir).is_dir() else None
        self.config = replace(config, cluster=None, show_progress=False, cache_dir=cache)
        elapsed = max(time.time() - budget_started_at, 0.0)         # the driver's clock, by the wall
        self.budget = Budget(budget_seconds, started=time.monotonic() - elapsed)
        self.run = StrategyRun(label=strategy.describe(), strategy=strategy.name, trains=strategy.trains,
                               options=dict(strategy.options))
        self.notes_sent = 0
        self.fits: list = []
        self._race = None

    def needs_data(self) -> bool:
        """Whether this machine lacks the competition at the driver's path (no shared disk)."""
        return not present(self.driver_root, self.manifest)

    def receive(self, blob: bytes) -> str:
        """The driver's images, unpacked into a folder of this machine's own."""
        self.root = unpack(blob, Path(tempfile.mkdtemp(prefix="retrieval-race-data-")))
        return str(self.root)

    @property
    def race(self):
        if self._race is None:
            data = find_competition(self.root)
            recorder = RaceRecorder(None, data, self.budget.seconds, options={})
            race = Race(data, make_yardstick(data, self.config), self.budget, recorder, self.config, RaceObserver(),
                        runs=[self.run])
            if relative_names(race.validation_paths, data.root) != self.validation_names:
                raise RuntimeError(f"the worker's validation split of {self.root} differs from the driver's: "
                                   "the competition's files are not the same here")
            self._race = race
        return self._race

    def estimate(self) -> RunState:
        race = self.race
        race.estimate(self.strategy, self.run, race.context)
        return self.state()

    def fit_and_validate(self) -> WorkerValidation:
        race, run = self.race, self.run
        self.fits = race.fit(self.strategy, run, race.context)
        yardstick = race.yardstick
        flips = race.flips(self.fits[0].encoder)
        several = len(self.fits) > 1
        encoders = []
        for number, fit in enumerate(self.fits):
            paths = yardstick.fold_paths[number] if self.strategy.trains else yardstick.choice_paths
            what = f"validation fold {number + 1}" if several else "validation"
            by_flip = {flip: self.in_driver_terms(race.embed(fit.encoder, run, paths, flip, what,
                                                             mirrored_too=len(flips) > 1))
                       for flip in flips}
            encoders.append(Precomputed(fit.encoder.fingerprint, fit.encoder.flippable, fit.encoder.report(), by_flip))
        return WorkerValidation(encoders=encoders, state=self.state())

    def embed_test(self, flip: bool) -> WorkerTest:
        self.run.flip_tta = flip
        test = self.race.embed_test(self.strategy, [fit.encoder for fit in self.fits], self.run)
        return WorkerTest(test=self.in_driver_terms(test), report=self.fits[0].encoder.report(), state=self.state())

    def in_driver_terms(self, embeddings):
        return rebased(embeddings, self.root, self.driver_root)

    def state(self) -> RunState:
        run = self.run
        notes, self.notes_sent = run.notes[self.notes_sent:], len(run.notes)
        return RunState(status=run.status, reason=run.reason, estimate=run.estimate, notes=notes,
                        details=dict(run.details), fit_seconds=run.fit_seconds, embed_seconds=run.embed_seconds,
                        deadline_in=None if run.deadline is None else run.deadline - time.monotonic())

