"""The race under a budget: the schedule, skipping, deadlines, the hard stop at the budget's end,
Ctrl-C (in process and as a real SIGINT to `invoke race`), the best copy and the live view.

The strategies here are test-only Strategy objects passed to run_race directly (the subprocess
test registers two of them in its own process): a fast pixel encoder, and trained strategies that
estimate too much, loop until their deadline, ignore it, sleep, or are interrupted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from strategies.base import Encoder, Fitted, Strategy, WeightsStatus, fingerprint_of, l2_normalise
from toolkit.race.budget import (FINAL_WRITE_FRACTION, WRITE_SECONDS, Budget, OutOfTime, hard_stop, images_after_fit,
                                 schedule)
from toolkit.data.dataset import find_competition
from toolkit.records.store import Leaderboard
from tests.racing import race
from toolkit.race.runs import RaceInterrupted
from toolkit.views.race import race_table
from toolkit.submit.submission import load_submission, validate_submission

PROJECT = Path(__file__).resolve().parents[1]


class PixelEncoder(Encoder):
    """Fast, deterministic embeddings for tests: a fixed random projection of a 12x12 thumbnail."""

    flippable = True
    batch_size = 16

    def __init__(self, width: int = 24, seed: int = 0):
        self.projection = np.random.default_rng(seed).standard_normal((12 * 12 * 3, width)).astype(np.float32)
        self.fingerprint = fingerprint_of("test-pixels", width, seed)

    def preprocess(self, image):
        pixels = np.asarray(image.convert("RGB").resize((12, 12)), dtype=np.float32) / 255.0
        return pixels - pixels.mean()

    def collate(self, items):
        return np.stack(items)

    def flip(self, batch):
        return batch[:, :, ::-1]

    def encode(self, batch) -> np.ndarray:
        return l2_normalise(batch.reshape(len(batch), -1) @ self.projection)


class PixelStrategy(Strategy):
    name = "test-pixels"
    summary = "test only: a random projection of a thumbnail"
    images_per_second_cpu = 200.0

    def __init__(self, width: int = 24, seed: int = 0, **options):
        super().__init__(width=width, seed=seed, **options)
        self.width, self.seed = width, seed

    def weights_status(self) -> WeightsStatus:
        return WeightsStatus(True, "no weights")

    def fit(self, training, context=None, deadline=None) -> Fitted:
        return Fitted(PixelEncoder(self.width, self.seed))


class TooSlow(PixelStrategy):
    name, trains = "test-too-slow", True
    fitted = False

    def estimate(self, training, context) -> float:
        return 1e6

    def fit(self, training, context=None, deadline=None) -> Fitted:
        self.fitted = True
        return super().fit(training, context, deadline)


class TrainsUntilDeadline(PixelStrategy):
    """A training loop that uses every second it is given, and stops at its deadline."""
    name, trains = "test-trains-until-deadline", True
    images_per_second_cpu = 50.0      # a nominal speed a busy machine still keeps: the reserve is enough
    received: float | None = None

    def estimate(self, training, context) -> float:
        return 1.0 + self.estimate_seconds(context.images_after_fit)

    def fit(self, training, context=None, deadline=None) -> Fitted:
        self.received = deadline
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return super().fit(training, context, deadline)


class FinishesLate(PixelStrategy):
    """Trains 1.2 s past its deadline, then finishes well inside the budget."""
    name, trains = "test-finishes-late", True
    images_per_second_cpu = 25.0      # slow to embed: its deadline leaves a reserve the overrun fits in

    def estimate(self, training, context) -> float:
        return 1.0

    def fit(self, training, context=None, deadline=None) -> Fitted:
        time.sleep(max(deadline + 1.2 - time.monotonic(), 0))
        return super().fit(training, context, deadline)


class Crashes(PixelStrategy):
    name = "test-crashes"

    def fit(self, training, context=None, deadline=None) -> Fitted:
        raise RuntimeError("boom")


class IgnoresDeadline(PixelStrategy):
    name, trains = "test-ignores-deadline", True

    def estimate(self, training, context) -> float:
        return 0.5

    def fit(self, training, context=None, deadline=None) -> Fitted:
        time.sleep(60)
        raise AssertionError("the race should have stopped this strategy")


class Interrupted(PixelStrategy):
    """Ctrl-C while it fits (a KeyboardInterrupt, as Python raises for SIGINT)."""
    name, trains = "test-interrupted", True

    def fit(self, training, context=None, deadline=None) -> Fitted:
        raise KeyboardInterrupt


class Sleepy(PixelStrategy):
    """Says it is fitting (a marker file named by $SLEEPY_MARKER), then waits to be interrupted, in
    short sleeps as real work is done: a signal that another thread of the process took is run by the
    main thread at its next step, not an hour later."""
    name, trains = "test-sleepy", True

    def fit(self, training, context=None, deadline=None) -> Fitted:
        Path(os.environ["SLEEPY_MARKER"]).write_text("fitting")
        for _ in range(36000):
            time.sleep(0.1)
        raise AssertionError("expected to be interrupted")


def _race(competition, strategies, tmp_path, **options):
    options = {"submissions_dir": tmp_path / "subs", "cache_dir": tmp_path / "cache", "num_workers": 0,
               "show_progress": False, "leaderboard": tmp_path / "board.db", "max_folds": 1, **options}
    return race(competition, strategies, **options)


def _valid(path, competition) -> dict:
    submission = load_submission(path)
    validate_submission(submission, [p.name for p in competition.queries], [p.name for p in competition.gallery])
    return submission


def _rows(tmp_path, race_id):
    with Leaderboard(tmp_path / "board.db") as board:
        return board.race(race_id), {row.name: row for row in board.runs(race_id)}


# --- the clock, on its own ---------------------------------------------------------------------------


def test_schedule_runs_zero_shot_first_then_trained_each_by_estimate_stably():
    entries = [("trained-slow", True, 50.0), ("zs-slow", False, 9.0), ("trained-fast", True, 5.0),
               ("zs-fast", False, 1.0), ("zs-fast-too", False, 1.0), ("trained-unknown", True, None)]
    ordered = schedule(entries, trains=lambda entry: entry[1], estimate=lambda entry: entry[2])
    assert [entry[0] for entry in ordered] == ["zs-fast", "zs-fast-too", "zs-slow", "trained-fast", "trained-slow",
                                                "trained-unknown"]


def test_budget_deadlines_leave_the_reserve_and_the_final_write():
    budget = Budget(100.0, started=1000.0)
    assert (budget.end, budget.final_end) == (1100.0, pytest.approx(1100.0 + 100 * FINAL_WRITE_FRACTION))
    assert budget.fit_deadline(12.5) == 1087.5
    assert Budget(None).fit_deadline(12.5) is None and Budget(None).left() == float("inf")
    # undecided flip: validation plain, then mirrored with the plain half cached (2 passes), test with flip (2)
    assert images_after_fit(10, 20, None) == 60 and images_after_fit(10, 20, False) == 30


def test_hard_stop_raises_out_of_time_and_leaves_no_timer_behind():
    slept = []
    with pytest.raises(OutOfTime):
        with hard_stop(time.monotonic() + 0.2):
            time.sleep(30)
            slept.append(True)
    assert slept == []                                  # stopped inside the sleep, not after it
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with hard_stop(time.monotonic() + 5):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# --- the race under a budget ----------------------------------------------------------------------


def test_a_strategy_that_would_overrun_is_skipped_not_started(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    too_slow = TooSlow()
    result = _race(competition, [too_slow, PixelStrategy()], tmp_path, budget_seconds=60, show_progress=True)
    skipped, finished = result.runs[1], result.runs[0]          # zero-shot first, whatever the order given
    assert (finished.label, finished.status) == ("test-pixels[seed=0,width=24]", "finished")
    assert skipped.status == "skipped" and not too_slow.fitted and skipped.submission is None
    assert skipped.reason.startswith("estimated 1000000s,") and skipped.reason.endswith("s left")
    assert not list((tmp_path / "subs").glob("*too-slow*"))
    assert len(result.runs) == 2                                # one finished strategy: no ensemble
    race, rows = _rows(tmp_path, result.race_id)
    assert rows[skipped.label].status == "skipped" and "estimated 1000000s" in rows[skipped.label].reason
    assert rows[finished.label].status == "finished" and race.seconds == pytest.approx(result.seconds)


def test_a_training_loop_gets_a_deadline_within_the_budget_and_the_race_ends_in_time(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    budget = 10.0
    trained = TrainsUntilDeadline()
    before = time.monotonic()
    result = _race(competition, [trained, PixelStrategy(width=16)], tmp_path, budget_seconds=budget)
    run = next(run for run in result.runs if run.strategy == "test-trains-until-deadline")
    # the deadline it was given leaves time to embed and write (at least WRITE_SECONDS) and still trains
    # for a while; every step after it ran under the budget's hard stop, so a finished run (not
    # timed-out) is one that ended in time
    assert trained.received == run.deadline
    assert before + 2 < trained.received <= before + budget - WRITE_SECONDS
    assert run.status == "finished", run.reason
    assert [run.strategy for run in result.runs][:2] == ["test-pixels", "test-trains-until-deadline"]
    assert [run.status for run in result.runs[2:]] in ([], ["finished"], ["timed-out"])   # the ensemble's time
    _valid(result.best_submission, competition)
    race, rows = _rows(tmp_path, result.race_id)
    assert race.ended_at is not None and set(rows) == {run.label for run in result.runs}


def test_a_strategy_still_running_when_the_budget_ends_is_stopped_and_timed_out(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    result = _race(competition, [IgnoresDeadline(), PixelStrategy()], tmp_path, budget_seconds=6.0)
    finished, stopped = result.runs           # stopped at the budget's end, not after its minute of sleep
    assert finished.status == "finished" and result.best is finished
    assert stopped.status == "timed-out" and stopped.reason == "still fitting when the budget ended"
    assert _valid(result.best_submission, competition) == load_submission(finished.submission)
    race, rows = _rows(tmp_path, result.race_id)
    assert rows[stopped.label].status == "timed-out" and race.ended_at is not None
    assert "timed-out" in {row.status for row in rows.values()}
    assert race_table(result).row_count == 2


def test_a_strategy_past_its_deadline_that_finishes_is_kept_with_a_note(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    result = _race(competition, [FinishesLate()], tmp_path, budget_seconds=6.0)
    [run] = result.runs
    assert run.status == "finished" and run.submission is not None
    assert any(note.startswith("fit overran its deadline by") for note in run.notes)


def test_a_crash_is_recorded_and_the_race_goes_on(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    result = _race(competition, [Crashes(), PixelStrategy()], tmp_path)
    crashed, finished = result.runs
    assert (crashed.status, crashed.reason) == ("failed", "RuntimeError: boom")
    assert finished.status == "finished" and result.best is finished
    _valid(result.best_submission, competition)
    race, rows = _rows(tmp_path, result.race_id)
    assert rows[crashed.label].status == "failed" and race.ended_at is not None


def test_ctrl_c_keeps_what_finished_writes_the_best_and_records_every_run(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    strategies = [PixelStrategy(), Interrupted(), TooSlow(width=16)]
    with pytest.raises(RaceInterrupted) as raised:
        _race(competition, strategies, tmp_path)
    assert isinstance(raised.value, KeyboardInterrupt)
    result = raised.value.result
    assert result.interrupted
    assert [(run.strategy, run.status, run.reason) for run in result.runs] == [
        ("test-pixels", "finished", ""), ("test-interrupted", "failed", "interrupted"),
        ("test-too-slow", "skipped", "not started: the race was interrupted")]
    assert _valid(result.best_submission, competition) == load_submission(result.runs[0].submission)
    race, rows = _rows(tmp_path, result.race_id)
    assert race.ended_at is not None and race.seconds == pytest.approx(result.seconds)
    assert {name: row.status for name, row in rows.items()} == {run.label: run.status for run in result.runs}
    assert rows[result.runs[0].label].validation_score == pytest.approx(result.runs[0].validation.score)


SCRIPT = """
import sys
sys.path.insert(0, {project!r})
from invoke import Collection, Program
from strategies import register
from tests.test_race_budget import PixelStrategy, Sleepy
register(PixelStrategy)
register(Sleepy)
import tasks
Program(namespace=Collection.from_module(tasks), version="test").run(["invoke", *sys.argv[1:]])
"""


def test_sigint_during_invoke_race_exits_130_with_the_best_so_far_written(tmp_path, synthetic_competition):
    interrupt_invoke_race(tmp_path, synthetic_competition)


def interrupt_invoke_race(tmp_path, synthetic_competition, *more: str, env: dict | None = None) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the process group of `invoke race` (test-sleepy and
    test-pixels, then `more` options), once the pixels are written and the sleepy one fits; then what
    a Ctrl-C must leave. Its output goes to files, not pipes: a child writing more than a pipe holds
    while nobody reads it would wait forever."""
    competition = find_competition(synthetic_competition)
    script, marker, board, subs = tmp_path / "race.py", tmp_path / "sleepy-is-fitting", tmp_path / "board.db", \
        tmp_path / "subs"
    script.write_text(SCRIPT.format(project=str(PROJECT)))
    env = {**os.environ, "SLEEPY_MARKER": str(marker), "COLUMNS": "200",
           "RETRIEVAL_RACE_CACHE": str(tmp_path / "cache"), **(env or {})}
    command = [sys.executable, str(script), "race", "--data", str(synthetic_competition), "--strategies",
               "test-sleepy,test-pixels", "--workers", "0", "--submissions", str(subs), "--leaderboard", str(board),
               *more]
    output = lambda: (tmp_path / "stdout.txt").read_text() + (tmp_path / "stderr.txt").read_text()  # noqa: E731
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        waited = time.monotonic()
        while not (marker.exists() and list(subs.glob("*-test-pixels-*.json"))) and process.poll() is None \
                and time.monotonic() - waited < 120:
            time.sleep(0.1)
        assert marker.exists() and process.poll() is None, output()
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    finally:
        process.kill()
    stdout, stderr = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    [best] = list(subs.glob("*-best.json"))
    assert f"interrupted: best so far written to {best}" in " ".join(stdout.split())
    [pixels] = list(subs.glob("*-test-pixels-*.json"))
    assert _valid(best, competition) == load_submission(pixels)
    with Leaderboard(board) as leaderboard:
        race = leaderboard.latest_race()
        assert race.ended_at is not None and race.seconds > 0
        rows = {row.strategy: row for row in leaderboard.runs(race.id)}
    assert rows["test-pixels"].status == "finished" and rows["test-pixels"].validation_score is not None
    assert Path(rows["test-pixels"].submission_path) == pixels.resolve()
    assert (rows["test-sleepy"].status, rows["test-sleepy"].reason) == ("failed", "interrupted")


# --- the live view ---------------------------------------------------------------------------------


def test_the_live_view_shows_every_run_and_nests_the_progress_bars(tmp_path, synthetic_competition):
    from toolkit.machine.console import console
    from toolkit.retrieval.embed import embed_images
    from toolkit.views.live import RaceView, nested_live_supported, race_view_table
    from toolkit.race.runs import StrategyRun

    runs = [StrategyRun(label="a", status="finished", estimate=3.0, started=0.0, ended=2.0),
            StrategyRun(label="b", status="fitting", started=time.monotonic()), StrategyRun(label="c")]
    budget = Budget(60.0)
    table = race_view_table(runs, budget)
    assert table.row_count == 3 and "left of 60 s" in str(table.title)
    with RaceView(runs, budget, enabled=False) as view:
        assert view.live is None
    with RaceView(runs, budget, enabled=True) as view:
        assert (view.live is not None) == nested_live_supported()
        paths = sorted(synthetic_competition.glob("test/query/*"))
        embedded = embed_images(PixelEncoder(), paths, cache_dir=tmp_path, num_workers=0, show_progress=True)
        assert embedded.computed == len(paths)
    assert not getattr(console, "_live_stack", [])


def test_a_budget_needs_a_unit():
    from toolkit.race.config import parse_duration

    assert [parse_duration(text) for text in ("90m", "1h30m", "45s", "1.5h", " 2 h ", None, "")] == \
        [5400, 5400, 45, 5400, 7200, None, None]
    assert parse_duration(90) == 90.0                              # a Python number is seconds
    for text, said in [("90", "--budget 90: give a unit, e.g. 90m or 90s"), ("1h30", "give a unit, e.g. 30m"),
                       ("soon", "cannot read duration"), ("0m", "above 0"), ("-5m", "cannot read duration")]:
        with pytest.raises(ValueError, match=said):
            parse_duration(text)
