"""The race's strategies on a Ray cluster (`invoke race --cluster ADDRESS`), at the same time.

    with cluster_session("local"):      # "local": start Ray here; "auto": the cluster `ray start`
        run_race(...)                   # made; "ray://host:10001": one elsewhere; None: no Ray

Each strategy is one Ray actor (toolkit.race.cluster_worker.StrategyWorker) that asks for the
resources the strategy declares (Strategy.resources: a GPU for torch models when the cluster has
GPUs, else a machine's cores; dlib's face-zs, a machine's cores), so independent strategies run at
the same time on different GPUs and machines. Actors start in the race's order (zero-shot first),
the next once every earlier one has a worker: Ray grants waiting actors in no set order. Ray gives
a worker as many torch threads as the cores it asked for. The driver keeps everything a race
decides: each worker estimates (the driver skips a strategy whose
estimate exceeds the time left, never truncating it), fits and embeds validation plain and
mirrored; the driver chooses flip and post-processing (Race.validate); the worker embeds the test
set at that flip; the driver ranks it, writes the submission and the leaderboard row (Race.submit,
end_run). Then ensembles, the best and the race row, in process as always.

At the budget's end a strategy still running is stopped (its actor killed) and recorded timed-out;
Ctrl-C kills every actor and keeps what finished; a worker that dies (a killed process, a lost
node) fails its strategy alone. A worker that does not see the competition's files at the
driver's path (no shared disk) is sent them once through Ray's object store.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from toolkit.models.weights import WeightsUnavailable
from toolkit.race.budget import OutOfTime, hard_stop
from toolkit.race.contract import Fitted
from toolkit.race.remote import data_manifest, pack, relative_names

LOCAL, AUTO = "local", "auto"
WAIT_SECONDS = 0.5       # the driver looks at the clock (and Ctrl-C) at least this often
WORKER_NICENESS = "RAY_worker_niceness"   # read by the Ray that ray.init starts here
INSTALL_HINT = "--cluster needs Ray: pip install 'retrieval-race[cluster]'"
NO_WORKER = "no worker was free before the budget ended"


def check_address(address: str) -> None:
    """ValueError (one line) unless `address` is local, auto, ray://host:port or host:port."""
    if address in (LOCAL, AUTO) or address.startswith("ray://") or ":" in address:
        return
    raise ValueError(f"--cluster {address}: give local, auto, ray://host:10001 or host:6379")


def ray_module():
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


@contextmanager
def cluster_session(address: str | None) -> Iterator[None]:
    """Ray joined (or, for `local`, started here) for the block, then left; None: nothing at all.
    A Ray already initialised in this process (a notebook's, a test's) is used and left running."""
    if not address:
        yield
        return
    check_address(address)
    ray = ray_module()
    joined = not ray.is_initialized()
    if joined:
        if address == LOCAL:        # Ray's workers run at nice 15: a CPU model's threads then stall
            os.environ.setdefault(WORKER_NICENESS, "0")     # behind Ray's own processes and the driver
        try:
            ray.init(address=address, include_dashboard=False,      # "local": a new one, always
                     log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ValueError(f"--cluster {address}: cannot reach a Ray cluster: "
                             f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    try:
        yield
    finally:
        if joined:
            ray.shutdown()


@dataclass
class _Step:
    """A strategy's actor and the call it is waiting on."""
    strategy: Any
    run: Any
    actor: Any
    stage: str = "needs_data"
    fits: list = field(default_factory=list)
    folds: list = field(default_factory=list)


def race_on_cluster(race, entries: list) -> None:
    """Race `entries` ((strategy, run) pairs) of `race` (toolkit.race.runner.Race) on the cluster."""
    _ClusterRace(race, ray_module()).run(entries)


class _ClusterRace:
    def __init__(self, race, ray):
        from toolkit.race.cluster_worker import StrategyWorker      # it imports the runner
        self.race, self.ray = race, ray
        self.worker_class = ray.remote(StrategyWorker)
        self.pending: dict[Any, _Step] = {}
        self.waiting: list[tuple] = []      # (strategy, run, resources) not yet given an actor
        self.actors: list = []
        self.shipped = None
        data = race.data
        self.manifest = data_manifest(data)
        self.names = relative_names(race.validation_paths, data.root)
        self.started_at = time.time() - race.budget.used()     # the budget's start, by the wall clock

    def run(self, entries: list) -> None:
        ordered = sorted(entries, key=lambda entry: entry[0].trains)   # zero-shot first, as in process
        self.race.runs[:] = [run for _, run in ordered]
        gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        cores = min((node["Resources"].get("CPU", 1) for node in self.ray.nodes() if node.get("Alive")), default=1)
        self.waiting = [(strategy, run, strategy.resources(gpus, cores)) for strategy, run in ordered]
        try:
            while self.pending or self.waiting:
                self.start_in_order()
                self.step()
        finally:                                # Ctrl-C, an error: no actor outlives the race
            for actor in self.actors:
                self.ray.kill(actor, no_restart=True)

    def start_in_order(self) -> None:
        """Start the next strategies' actors, each once every earlier one has a worker (Ray grants
        waiting actors in no set order: a trained strategy granted first could hold every worker
        to the budget's end while a zero-shot one listed ahead of it waited)."""
        while self.waiting and not any(step.stage == "needs_data" for step in self.pending.values()):
            self.start(*self.waiting.pop(0))

    def start(self, strategy, run, resources: dict) -> None:
        race = self.race
        actor = self.worker_class.options(**resources, max_restarts=0, max_task_retries=0).remote(
            strategy, str(race.data.root), self.manifest, race.config, race.budget.seconds, self.started_at,
            self.names)
        self.actors.append(actor)       # queued until Ray gives it a worker and it first answers
        self.pending[actor.needs_data.remote()] = _Step(strategy, run, actor)

    def step(self) -> None:
        budget = self.race.budget
        ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=min(WAIT_SECONDS, max(budget.left(), 0)))
        if not ready:
            if budget.left() <= 0:
                self.stop_all()
            return
        step = self.pending.pop(ready[0])
        try:
            result = self.ray.get(ready[0])
            with hard_stop(budget.end):
                getattr(self, f"after_{step.stage}")(step, result)
        except OutOfTime:
            self.end(step, "timed-out", f"still {step.run.status} when the budget ended")
        except self.ray.exceptions.RayActorError as error:
            self.end(step, "failed", f"its Ray worker could not start it: {_last_error_line(error)}"
                     if getattr(error, "actor_init_failed", False) else f"its Ray worker died: {_first_line(error)}")
        except self.ray.exceptions.RayTaskError as error:
            self.fail(step, getattr(error, "cause", None) or error)
        except Exception as error:      # noqa: BLE001 - the driver's part failed: this strategy alone
            self.fail(step, error)

    def ask(self, step: _Step, stage: str, *arguments) -> None:
        step.stage = stage
        self.pending[getattr(step.actor, stage).remote(*arguments)] = step

    # --- each call's answer --------------------------------------------------------------------

    def after_needs_data(self, step: _Step, needs: bool) -> None:
        step.run.status = "estimating"
        if needs:
            if self.shipped is None:            # packed and put once, whichever workers need it
                self.shipped = self.ray.put(pack(self.race.data))
            self.ask(step, "receive", self.shipped)
        else:
            self.ask(step, "estimate")

    def after_receive(self, step: _Step, folder: str) -> None:
        step.run.notes.append("the competition was sent to its worker (no shared disk)")
        self.ask(step, "estimate")

    def after_estimate(self, step: _Step, state) -> None:
        run, budget = step.run, self.race.budget
        state.apply(run)
        if run.status != "queued":                  # the worker's estimate failed, or no weights
            self.end(step, run.status, run.reason)
        elif run.estimate is not None and run.estimate > budget.left():
            self.end(step, "skipped", f"estimated {run.estimate:.0f}s, {max(budget.left(), 0):.0f}s left")
        else:
            run.started, run.status = time.monotonic(), "fitting"
            self.race.observer.started(run)
            self.ask(step, "fit_and_validate")

    def after_fit_and_validate(self, step: _Step, validation) -> None:
        run = step.run
        validation.state.apply(run)
        run.status = "embedding"
        step.fits = [Fitted(encoder) for encoder in validation.encoders]
        step.folds = self.race.validate(step.strategy, step.fits, run)
        self.ask(step, "embed_test", run.flip_tta)

    def after_embed_test(self, step: _Step, tested) -> None:
        tested.state.apply(step.run)
        self.race.submit(step.run, step.folds, tested.test, tested.report)
        self.end(step, "finished")

    # --- ending --------------------------------------------------------------------------------

    def fail(self, step: _Step, error: BaseException) -> None:
        if isinstance(error, WeightsUnavailable):
            self.race.without_weights(step.run, error)
            self.ray.kill(step.actor, no_restart=True)
        else:
            self.end(step, "failed", self.race.failure(step.run, error))

    def end(self, step: _Step, status: str, reason: str = "") -> None:
        self.ray.kill(step.actor, no_restart=True)      # its resources go to the strategies waiting
        self.race.end_run(step.run, status, reason)

    def stop_all(self) -> None:
        """The budget has ended: what runs is stopped (timed-out), what never started is skipped."""
        for step in list(self.pending.values()):
            if step.stage == "needs_data":      # its actor never got a worker
                self.end(step, "skipped", NO_WORKER)
            else:
                self.end(step, "timed-out", f"still {step.run.status} when the budget ended")
        for _, run, _ in self.waiting:          # never given an actor
            self.race.end_run(run, "skipped", NO_WORKER)
        self.pending.clear()
        self.waiting.clear()


def _last_error_line(error: BaseException) -> str:
    """The remote exception's own line (`ModuleNotFoundError: No module named 'x'`) in Ray's text."""
    lines = [line.strip() for line in str(error).splitlines() if "Error: " in line or "Exception: " in line]
    return lines[-1] if lines else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
