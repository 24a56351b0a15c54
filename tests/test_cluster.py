"""The race on a real local Ray cluster (no mocks), with tiny test strategies: they run at the same
time, their submissions equal the in-process race's, one still running at the budget's end is
stopped and recorded timed-out, one whose worker process is killed fails alone, and Ctrl-C (a real
SIGINT to `invoke race --cluster local`) exits 130 with the best so far written.

The test strategies are pickled to Ray's worker processes, which import them from this project
(the cluster the module starts finds them through PYTHONPATH: pytest imports this file as
`test_cluster`, other test modules as `tests.<name>`)."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from strategies.base import Fitted
from tests.racing import race
from tests.test_race_budget import PROJECT, PixelEncoder, PixelStrategy, interrupt_invoke_race
from toolkit.data.dataset import find_competition
from toolkit.race.cluster import LOCAL, cluster_session
from toolkit.race.remote import data_manifest, pack, present
from toolkit.records.store import Leaderboard
from toolkit.retrieval.embed import embed_images
from toolkit.submit.submission import load_submission

ray = pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e '.[cluster]'")

WAIT = 120.0      # seconds a test waits for something that happens in a second when the machine is idle


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module's races, started as `--cluster local` starts it: its
    workers at the driver's priority (Ray's own nice 15 starves them beside another busy process)."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT), str(PROJECT / "tests"), os.environ.get("PYTHONPATH", "")])
    with cluster_session(LOCAL):
        yield ray


def _wait_for(condition, what: str) -> None:
    ends = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < ends, f"waited {WAIT:.0f}s for {what}"
        time.sleep(0.05)


class Rendezvous(PixelStrategy):
    """Fits only once the other one has started fitting too: two of them finish only when they run
    at the same time. Each says when it began and ended (wall clock) in what it measured."""
    name = "test-rendezvous"

    def __init__(self, folder: str = "", me: str = "a", other: str = "b", **options):
        super().__init__(**options)
        self.folder, self.me, self.other = folder, me, other

    def describe(self) -> str:
        return f"{self.name}-{self.me}"

    def resources(self, gpus: bool, cores: int) -> dict[str, float]:
        return {"num_cpus": 1, "num_gpus": 0}           # a light model: one core each, two at once

    def fit(self, training, context=None, deadline=None) -> Fitted:
        began = time.time()
        (Path(self.folder) / self.me).write_text(str(os.getpid()))
        _wait_for((Path(self.folder) / self.other).exists, f"{self.other} to start")
        fitted = super().fit(training, context, deadline)
        return Fitted(fitted.encoder, details={"began": began, "ended": time.time(), "pid": os.getpid(),
                                               "threads": torch.get_num_threads()})


class Stamped(PixelStrategy):
    """Says when (wall clock) it began fitting, in what it measured."""
    name = "test-stamped"

    def fit(self, training, context=None, deadline=None) -> Fitted:
        return Fitted(super().fit(training, context, deadline).encoder, details={"began": time.time()})


class Stuck(PixelStrategy):
    """A trained strategy that writes its process id to a file, then sleeps through any deadline."""
    name, trains = "test-stuck", True

    def __init__(self, marker: str = "", **options):
        super().__init__(**options)
        self.marker = marker

    def fit(self, training, context=None, deadline=None) -> Fitted:
        Path(self.marker).write_text(str(os.getpid()))
        time.sleep(3600)
        raise AssertionError("expected to be stopped")


def _options(tmp_path, **more) -> dict:
    return {"submissions_dir": tmp_path / "subs", "cache_dir": tmp_path / "cache", "num_workers": 0,
            "show_progress": False, "max_folds": 1, **more}


def _contents(runs) -> dict[str, dict]:
    return {run.label: load_submission(run.submission) for run in runs if run.submission is not None}


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_two_strategies_run_at_the_same_time(cluster, tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    folder = tmp_path / "meeting"
    folder.mkdir()
    strategies = [Rendezvous(folder=str(folder), me="a", other="b"),
                  Rendezvous(folder=str(folder), me="b", other="a", width=16)]
    result = race(competition, strategies, cluster="auto", ensemble_size=0, **_options(tmp_path))
    runs = {run.label: run for run in result.runs}
    assert [runs[label].status for label in ("test-rendezvous-a", "test-rendezvous-b")] == ["finished", "finished"], \
        [run.reason for run in result.runs]
    a, b = runs["test-rendezvous-a"].details, runs["test-rendezvous-b"].details
    assert a["began"] < b["ended"] and b["began"] < a["ended"]          # their fits overlapped
    assert a["pid"] != b["pid"] != os.getpid()                         # in two worker processes
    assert a["threads"] == b["threads"] == 1                           # torch threads: the cores it asked for


def test_submissions_equal_the_in_process_race(cluster, tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    strategies = [PixelStrategy(), PixelStrategy(width=16, seed=3)]
    here = race(competition, strategies, **_options(tmp_path / "here", max_folds=2))
    there = race(competition, strategies, cluster="auto", **_options(tmp_path / "there", max_folds=2))
    assert [run.status for run in there.runs] == ["finished"] * 3                  # two, and their ensemble
    assert _contents(there.runs) == _contents(here.runs) and len(_contents(here.runs)) == 3
    assert load_submission(there.best_submission) == load_submission(here.best_submission)
    pairs = [({run.label: run for run in there.runs}[run.label], run) for run in here.runs]
    assert all(remote.validation.score == local.validation.score and remote.flip_tta == local.flip_tta
               and remote.post_processing == local.post_processing for remote, local in pairs)


def test_strategies_that_each_need_the_whole_cluster_start_in_the_race_s_order(cluster, tmp_path,
                                                                             synthetic_competition):
    competition = find_competition(synthetic_competition)
    strategies = [Stamped(width=width) for width in (8, 12, 16, 20)]      # the whole cluster each: one at a time
    result = race(competition, strategies, cluster="auto", ensemble_size=0, **_options(tmp_path))
    assert [run.status for run in result.runs] == ["finished"] * 4, [run.reason for run in result.runs]
    began = [run.details["began"] for run in result.runs]
    assert began == sorted(began), [run.label for run in sorted(result.runs, key=lambda run: run.details["began"])]


def test_a_strategy_still_running_at_the_budget_end_is_stopped_and_timed_out(cluster, tmp_path,
                                                                            synthetic_competition):
    competition = find_competition(synthetic_competition)
    marker = tmp_path / "stuck.pid"
    result = race(competition, [PixelStrategy(), Stuck(marker=str(marker))], cluster="auto", budget_seconds=25,
                  leaderboard=tmp_path / "board.db", **_options(tmp_path))
    runs = {run.strategy: run for run in result.runs}
    assert (runs["test-stuck"].status, runs["test-stuck"].reason) == ("timed-out", "still fitting when the budget ended")
    assert runs["test-pixels"].status == "finished"
    assert load_submission(result.best_submission) == load_submission(runs["test-pixels"].submission)
    _wait_for(lambda: _dead(int(marker.read_text())), "the stuck worker to be killed")
    with Leaderboard(tmp_path / "board.db") as board:
        assert {row.strategy: row.status for row in board.runs(result.race_id)} == \
            {"test-pixels": "finished", "test-stuck": "timed-out"}


def test_a_worker_killed_mid_strategy_fails_it_alone(cluster, tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    marker = tmp_path / "stuck.pid"

    def kill_when_fitting():
        _wait_for(marker.exists, "the strategy to start fitting")
        time.sleep(0.2)                      # the id is written whole
        os.kill(int(marker.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_fitting, daemon=True)
    killer.start()
    result = race(competition, [Stuck(marker=str(marker)), PixelStrategy()], cluster="auto", **_options(tmp_path))
    killer.join(timeout=WAIT)
    runs = {run.strategy: run for run in result.runs}
    assert runs["test-stuck"].status == "failed" and runs["test-stuck"].reason.startswith("its Ray worker died")
    assert runs["test-pixels"].status == "finished"
    assert load_submission(result.best_submission) == load_submission(runs["test-pixels"].submission)


def test_a_worker_without_the_files_is_sent_them(tmp_path, synthetic_competition):
    """No shared disk: the worker checks the driver's path against the manifest, then unpacks the
    zip the driver ships (here in process; on a cluster through Ray's object store)."""
    from toolkit.race.cluster_worker import StrategyWorker
    from toolkit.race.config import RaceConfig
    from toolkit.race.remote import relative_names
    from toolkit.race.runner import make_yardstick

    competition = find_competition(synthetic_competition)
    config = RaceConfig(gallery_pattern="*_s.*", max_folds=1, cache_dir=tmp_path / "cache")
    yardstick = make_yardstick(competition, config)
    names = relative_names(list(dict.fromkeys(yardstick.choice_paths + sum(yardstick.fold_paths, []))),
                           competition.root)
    manifest = data_manifest(competition)
    assert present(competition.root, manifest)
    driver_root = tmp_path / "not-here"           # the driver's folder, which this "machine" lacks
    in_driver_terms = lambda paths: [driver_root / path.relative_to(competition.root) for path in paths]  # noqa: E731
    elsewhere = StrategyWorker(PixelStrategy(), str(driver_root), manifest, config, None, time.time(), names)
    assert elsewhere.needs_data()
    root = Path(elsewhere.receive(pack(competition)))
    assert present(root, manifest)
    validation = elsewhere.fit_and_validate()
    [encoder] = validation.encoders
    assert encoder.by_flip[False].paths == in_driver_terms(make_yardstick(competition, config).choice_paths)
    tested = elsewhere.embed_test(False)
    assert tested.test.paths == in_driver_terms(list(competition.queries) + list(competition.gallery))
    here = embed_images(PixelEncoder(), list(competition.queries) + list(competition.gallery), cache_dir=None,
                        num_workers=0, show_progress=False)
    assert not tested.test.problems and np.array_equal(tested.test.vectors, here.vectors)   # the unpacked copy


def test_sigint_during_a_cluster_race_exits_130_with_the_best_so_far(tmp_path, synthetic_competition):
    """Ctrl-C as a terminal sends it, to the race's process group (its local Ray cluster included)."""
    interrupt_invoke_race(tmp_path, synthetic_competition, "--cluster", "local",
                          env={"PYTHONPATH": os.pathsep.join([str(PROJECT), str(PROJECT / "tests")])})


def test_a_worker_that_sees_other_files_says_so(tmp_path, synthetic_competition):
    from toolkit.race.cluster_worker import StrategyWorker
    from toolkit.race.config import RaceConfig

    competition = find_competition(synthetic_competition)
    config = RaceConfig(gallery_pattern="*_s.*", max_folds=1, cache_dir=tmp_path / "cache")
    worker = StrategyWorker(PixelStrategy(), str(competition.root), data_manifest(competition), config, None,
                            time.time(), ["training/someone/else.jpg"])
    with pytest.raises(RuntimeError, match="validation split .* differs from the driver's"):
        worker.fit_and_validate()


def test_each_strategy_asks_the_cluster_for_what_its_model_runs_on():
    from strategies import create_strategy
    from toolkit.race.cluster import check_address

    assert create_strategy("face-zs").resources(gpus=True, cores=8) == {"num_cpus": 8, "num_gpus": 0}   # dlib: CPUs
    assert create_strategy("cnn-zs").resources(gpus=True, cores=8) == {"num_cpus": 1, "num_gpus": 1}
    assert create_strategy("cnn-zs").resources(gpus=False, cores=8) == {"num_cpus": 8, "num_gpus": 0}
    for address in ("local", "auto", "ray://head:10001", "10.0.0.5:6379"):
        check_address(address)
    with pytest.raises(ValueError, match="give local, auto, ray://host:10001"):
        check_address("my-laptop")
