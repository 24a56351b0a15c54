"""Ctrl-C as a person presses it: a SIGINT to the command's whole process group (its DataLoader
workers too), at any moment. Each time: exit code 130 within 5 s, one line that says what was
kept, no traceback, no worker left behind, the best so far written and a leaderboard that agrees
with the files, every run in it once.

The race is tiny and cheap (a random-weights cnn-zs at 32 px and an adapter over it, six training
identities, two DataLoader workers) so that twenty interrupted races take about a minute. The
moments are drawn with a seeded generator, three or four in each phase: the scan, embedding with
two workers, the re-ranking choice, the ensemble, the writing, and anywhere in the race; each
phase is found from what the race shows (its lines, files and worker processes), its length
measured on a whole race first."""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from tests.conftest import PROJECT
from tests.invoke_forks import InvokeForks
from toolkit.data.synthetic import make_synthetic_competition
from toolkit.machine import interrupts
from toolkit.machine.interrupts import EXIT_CODE, interruptible, worker_batches
from toolkit.records.store import RUN_STATUSES, Leaderboard
from toolkit.submit.submission import load_submission, validate_submission

SEED = 20261201
MOMENTS = 20
EXIT_SECONDS = 5.0          # the bound: an interrupted command has exited within 5 s
NOTHING_KEPT = ("interrupted: nothing was started", "interrupted: no strategy had finished; nothing written")
NOISE = ("Traceback", "Exception ignored", "KeyboardInterrupt", "exited unexpectedly")
CNN = "cnn-zs[pretrained=false,image_size=32,batch_size=4]"
ADAPTER = "adapter[base=cnn-zs,base_options=pretrained=false;image_size=32;batch_size=4,steps=10,evaluate_every=5]"
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "COLUMNS": "200"}    # one intra-op thread: steady on a busy machine


@pytest.fixture(scope="module")
def tiny_competition(tmp_path_factory) -> Path:
    return make_synthetic_competition(tmp_path_factory.mktemp("tiny") / "competition", training_identities=6,
                                      test_identities=3, photos_per_identity=3, distractors=2, size=64)


def _race_arguments(competition: Path, folder: Path) -> list[str]:
    return ["race", "--data", str(competition), "--strategies", f"{CNN},{ADAPTER}", "--workers", "2",
            "--flip", "off", "--submissions", str(folder / "subs"), "--leaderboard", str(folder / "board.db")]


def _live_members(group: int) -> list[str]:
    """The processes of a process group that are still alive (zombies aside): 'pid command'."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        command, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(fields[2]) == group and fields[0] != "Z":
            alive.append(f"{stat.parent.name} {command}")
    return alive


def _group_ended(group: int, timeout: float) -> list[str]:
    """Wait up to `timeout` s for the group to be gone; what is left of it."""
    waited_until = time.monotonic() + timeout
    while _live_members(group) and time.monotonic() < waited_until:
        time.sleep(0.05)
    return _live_members(group)


def _rows(folder: Path) -> str:
    """The race's runs as the leaderboard has them, e.g. "cnn-zs finished, adapter failed"."""
    if not (folder / "board.db").exists():
        return "no leaderboard yet"
    with Leaderboard(folder / "board.db") as board:
        return ", ".join(f"{run.strategy} {run.status}" for run in board.runs()) or "no run recorded"


class RaceEvents:
    """What a running race shows from outside, polled: its lines, its files, its worker processes."""

    def __init__(self, command, folder: Path):
        self.command, self.folder = command, folder

    def told(self) -> bool:
        return bool(self.command.stdout.strip())

    def validation_embedded(self) -> bool:         # cnn-zs's validation progress bar, printed as it ends
        return "cnn-zs validation" in self.command.stdout

    def test_embedded(self) -> bool:
        return "cnn-zs test" in self.command.stdout

    def cnn_zs_written(self) -> bool:              # its submission: next its row, then the adapter starts
        return bool(list((self.folder / "subs").glob("*-cnn-zs-*.json")))

    def adapter_started(self) -> bool:
        return "─ adapter[" in self.command.stdout

    def workers_running(self) -> bool:             # the command and its two DataLoader workers
        return len(_live_members(self.command.pid)) >= 3

    def adapter_written(self) -> bool:             # the last strategy's submission: the ensemble is next
        return bool(list((self.folder / "subs").glob("*-adapter-*.json")))

    def ensemble_written(self) -> bool:
        return bool(list((self.folder / "subs").glob("*-ensemble-*.json")))

    def done(self) -> bool:
        return "best by validation" in self.command.stdout

    def wait_for(self, event: str, timeout: float = 300) -> bool:
        """Poll until the event, or until the race ended or `timeout` passed: whether it came."""
        given_up_at = time.monotonic() + timeout         # generous bounds, not measurements
        while not getattr(self, event)():
            if self.command.wait(timeout=0.01) is not None or time.monotonic() > given_up_at:
                return False
        return True


def _timeline(command, folder: Path, started: float) -> dict[str, float]:
    """The seconds after `started` at which a whole race showed each event."""
    events, seen = RaceEvents(command, folder), {}
    names = ("told", "validation_embedded", "test_embedded", "cnn_zs_written", "adapter_started", "adapter_written",
             "ensemble_written", "done")
    given_up_at = started + 600
    while command.wait(timeout=0.01) is None and time.monotonic() < given_up_at:
        seen.update({name: time.monotonic() - started for name in names if name not in seen and getattr(events, name)()})
    assert command.code == 0 and set(seen) == set(names), (seen, command.stdout + command.stderr)
    return seen


def _moment(phase: str, timeline: dict[str, float], generator: random.Random) -> tuple[str | None, float]:
    """Where a try's Ctrl-C goes: after which event (None: the start) and how long after it."""
    if phase == "scan":
        return None, generator.uniform(0, timeline["told"])
    if phase == "embedding with 2 workers":
        return "workers_running", generator.uniform(0, 0.05)
    if phase == "re-ranking":
        return "validation_embedded", generator.uniform(0, (timeline["test_embedded"] - timeline["validation_embedded"]) / 2)
    if phase == "ensemble":
        return "adapter_written", generator.uniform(0, timeline["ensemble_written"] - timeline["adapter_written"])
    if phase == "writing":      # a submission written, its row recorded: a Ctrl-C must not record it twice
        return "cnn_zs_written", generator.uniform(0, timeline["adapter_started"] - timeline["cnn_zs_written"])
    return None, generator.uniform(0, timeline["done"])       # anywhere: the adapter's fits mostly


PHASES = ("scan", "embedding with 2 workers", "re-ranking", "ensemble", "writing", "anywhere")


def _check_what_was_kept(folder: Path, competition: Path, stdout: str, interrupted: bool) -> None:
    """The leaderboard agrees with the submissions folder and the line the command printed."""
    said = [line for line in stdout.splitlines() if line.startswith("interrupted:")]
    assert len(said) == (1 if interrupted else 0), stdout
    subs = folder / "subs"
    files = {path.resolve() for path in subs.iterdir()} if subs.is_dir() else set()
    best_copies = sorted(subs.glob("*-best.json")) if subs.is_dir() else []
    races, runs = [], []
    if (folder / "board.db").exists():
        with Leaderboard(folder / "board.db") as board:
            races, runs = board.races(), board.runs()
    assert len(races) <= 1
    if races:
        assert races[0].ended_at is not None, "the race row was never closed"
    names = [run.name for run in runs]
    assert len(names) == len(set(names)), f"a run recorded twice: {names}"
    assert all(run.status in RUN_STATUSES for run in runs), [run.status for run in runs]
    queries = [path.name for path in sorted((competition / "test" / "query").iterdir())]
    gallery = [path.name for path in sorted((competition / "test" / "gallery").iterdir())]
    referenced = {Path(run.submission_path) for run in runs if run.submission_path}
    for path in referenced:
        validate_submission(load_submission(path), queries, gallery)
    assert files <= referenced | {path.resolve() for path in best_copies}, "a file no row points at"
    finished = [run for run in runs if run.status == "finished"]
    if not finished:
        assert not best_copies and (not interrupted or said[0] in NOTHING_KEPT), stdout
        return
    [best] = best_copies
    [chosen] = [run for run in runs if run.chosen]
    assert chosen.status == "finished" and load_submission(best) == load_submission(chosen.submission_path)
    if interrupted:
        assert said[0].split() == ["interrupted:", "best", "so", "far", "written", "to", str(best)], said[0]


def test_ctrl_c_at_20_moments_of_a_race_exits_130_at_once_and_keeps_a_consistent_record(tiny_competition,
                                                                                         tmp_path):
    generator = random.Random(SEED)
    hits: dict[str, list[str]] = {phase: [] for phase in PHASES}
    with InvokeForks({**ENVIRONMENT, "RETRIEVAL_RACE_LEADERBOARD": str(tmp_path / "unused.db")}) as forks:
        whole = tmp_path / "whole"
        started = time.monotonic()
        command = forks.start(_race_arguments(tiny_competition, whole), whole,
                              {"RETRIEVAL_RACE_CACHE": str(whole / "cache")})
        timeline = _timeline(command, whole, started)
        _check_what_was_kept(whole, tiny_competition, command.stdout, interrupted=False)

        for number in range(MOMENTS):
            phase = PHASES[number % len(PHASES)]
            event, delay = _moment(phase, timeline, generator)
            folder = tmp_path / f"try-{number:02d}"
            command = forks.start(_race_arguments(tiny_competition, folder), folder,
                                  {"RETRIEVAL_RACE_CACHE": str(folder / "cache")})
            where = f"try {number} ({phase}): Ctrl-C {delay:.2f} s after {event or 'the start'}"
            if (event is None or RaceEvents(command, folder).wait_for(event)) and command.wait(timeout=delay) is None:
                os.killpg(command.pid, signal.SIGINT)
                code = command.wait(timeout=EXIT_SECONDS)
                assert code is not None, f"{where}: still running {EXIT_SECONDS:.0f} s later\n{command.stacks()}"
            interrupted = command.code == EXIT_CODE
            if interrupted:
                hits[phase].append(_rows(folder))
            else:       # done before the moment, or interrupted once done, while the process exited
                assert command.code == 0 and "best by validation" in command.stdout, \
                    f"{where}: exit code {command.code}\n{command.stdout}{command.stderr}"
            output = command.stdout + command.stderr
            assert not [noise for noise in NOISE if noise in output], f"{where}\n{output}"
            assert _group_ended(command.pid, EXIT_SECONDS) == [], f"{where}: processes left"
            _check_what_was_kept(folder, tiny_competition, command.stdout, interrupted)
    print("\n".join(f"{phase}: {rows}" for phase, hit in hits.items() for rows in hit))
    assert all(hits.values()), f"a phase never interrupted: {hits}"
    assert any("adapter finished" in rows for rows in hits["ensemble"]), hits


def test_ctrl_c_before_the_race_starts_exits_130_with_one_line(tmp_path, tiny_competition):
    """A real `invoke race`, interrupted while it imports the strategies (seconds of torch and
    friends, before anything is raced): Python's -X importtime lines say how far it has come."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "invoke", "--search-root", str(PROJECT),
                                *_race_arguments(tiny_competition, tmp_path)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **ENVIRONMENT, "RETRIEVAL_RACE_CACHE": str(tmp_path / "cache")})
    stderr: list[str] = []
    importing_strategies = threading.Event()

    def read_stderr() -> None:
        for line in process.stderr:
            stderr.append(line)
            if line.split("|")[-1].strip() == "toolkit.race.contract":   # imported by strategies.base, in the task
                importing_strategies.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert importing_strategies.wait(timeout=120) and process.poll() is None, "".join(stderr[-20:])
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=EXIT_SECONDS)
        stdout = process.stdout.read()
        assert code == EXIT_CODE, stdout + "".join(stderr)
    finally:
        process.kill()
    reader.join(timeout=10)
    assert stdout.splitlines() == ["interrupted: no strategy had finished; nothing written"], stdout
    assert not [line for line in stderr if not line.startswith("import time:")], "".join(stderr)
    assert not (tmp_path / "subs").exists() and not (tmp_path / "board.db").exists()


# --- the parts ------------------------------------------------------------------------------------


def test_a_command_says_one_line_and_exits_130_and_a_second_ctrl_c_does_not_cut_its_clean_up(capsys):
    cleaned = []

    @interruptible("nothing was written")
    def command():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        finally:
            os.kill(os.getpid(), signal.SIGINT)       # pressed again while it cleans up
            time.sleep(0.05)
            cleaned.append(True)

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exited:
            command()
        assert exited.value.code == EXIT_CODE and cleaned == [True]
        assert capsys.readouterr().out.splitlines() == ["interrupted: nothing was written"]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN      # while the process exits
    finally:
        signal.signal(signal.SIGINT, handler)


class _PressedAsItIsNamed:
    """A class attribute whose __set_name__ is where the Ctrl-C lands: Python 3.11 wraps what it
    raises in RuntimeError("Error calling __set_name__ ..."), as when a press lands while a
    dataclass is made during an import (found by the 20-moment test: exit 1 and a traceback)."""

    def __set_name__(self, owner: type, name: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)


def _pressed_while_a_class_is_made() -> None:
    type("Made", (), {"field": _PressedAsItIsNamed()})


def _pressed_inside_a_library_that_wraps_it() -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    except KeyboardInterrupt:
        raise OSError("the library's own error, raised while it handled the press")


@pytest.mark.parametrize("body, line", [
    (_pressed_while_a_class_is_made, "interrupted: nothing was written"),
    (_pressed_inside_a_library_that_wraps_it, "interrupted: nothing was written (on the way out: OSError: "
                                              "the library's own error, raised while it handled the press)"),
], ids=["set_name", "wrapped"])
def test_a_ctrl_c_that_python_or_a_library_wraps_in_another_error_still_exits_130_with_one_line(body, line,
                                                                                              capsys):
    command = interruptible("nothing was written")(body)
    with pytest.raises(SystemExit) as exited:     # the handler it leaves is put back by conftest
        command()
    assert exited.value.code == EXIT_CODE
    assert capsys.readouterr().out.splitlines() == [line]


def test_an_error_of_its_own_in_an_interruptible_command_is_still_raised():
    @interruptible("nothing was written")
    def command():
        raise RuntimeError("a real fault, no Ctrl-C")

    with pytest.raises(RuntimeError, match="a real fault"):
        command()


def _tiny_race_in_process(competition: Path, folder: Path, leaderboard: Path | None = None):
    """One tiny cnn-zs race in this process, writing into `folder`."""
    from strategies import create_strategy
    from toolkit.data.dataset import find_competition
    from toolkit.race.config import RaceConfig
    from toolkit.race.runner import run_race

    strategy = create_strategy("cnn-zs", pretrained=False, image_size=32, batch_size=4)
    config = RaceConfig(submissions_dir=folder / "subs", cache_dir=folder / "cache", flip_tta=False, num_workers=0,
                        max_folds=1)
    return run_race(find_competition(competition), [strategy], config, leaderboard=leaderboard)


def test_a_ctrl_c_just_after_the_race_returned_says_the_best_it_wrote(tiny_competition, tmp_path, capsys):
    """The press lands after run_race has written the best and returned, before its caller could
    say so (the last moment of a race's command): the line names the file, not 'nothing written'."""
    from toolkit.race.config import NOTHING_RACED

    returned = []

    @interruptible(NOTHING_RACED)
    def command():
        returned.append(_tiny_race_in_process(tiny_competition, tmp_path))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)

    with pytest.raises(SystemExit):     # the handler it leaves is put back by conftest's ctrl_c_as_in_a_terminal
        command()
    [best] = sorted((tmp_path / "subs").glob("*-best.json"))
    assert returned[0].best_submission == best
    assert capsys.readouterr().out.splitlines()[-1] == f"interrupted: best so far written to {best}"


def _pressed_while_opened(*arguments, **keywords):
    _pressed_while_a_class_is_made()


class _ReachedAsItIsNamed:
    """A class attribute whose __set_name__ is where a deadline's alarm (hard_stop) lands."""

    def __set_name__(self, owner: type, name: str) -> None:
        time.sleep(30)


def _reached_while_opened(*arguments, **keywords):
    type("Made", (), {"field": _ReachedAsItIsNamed()})


def test_a_deadline_that_python_wraps_in_another_error_still_ends_the_block_out_of_time():
    from toolkit.race.budget import OutOfTime, hard_stop

    with pytest.raises(OutOfTime):
        with hard_stop(time.monotonic() + 0.05):
            _reached_while_opened()


@pytest.mark.parametrize("stop", ["press", "deadline"])
def test_a_stop_wrapped_while_an_image_is_decoded_is_a_stop_not_an_unreadable_file(stop, tmp_path, monkeypatch):
    """Pillow imports its format plugins at the first open: a Ctrl-C or the budget's end there is
    no fault of the file (an image taken for unreadable would let the race run on past its end)."""
    from PIL import Image

    from toolkit.data.images import UnreadableImage, load_rgb
    from toolkit.race.budget import OutOfTime, hard_stop

    path = tmp_path / "fine.png"
    Image.new("RGB", (8, 8)).save(path)
    monkeypatch.setattr(Image, "open", _pressed_while_opened if stop == "press" else _reached_while_opened)
    with pytest.raises(KeyboardInterrupt if stop == "press" else OutOfTime):
        with hard_stop(time.monotonic() + 0.05 if stop == "deadline" else None):
            try:
                load_rgb(path)
            except UnreadableImage as unreadable:
                pytest.fail(f"the {stop} was taken for a bad file: {unreadable}")


def test_a_ctrl_c_wrapped_while_the_cache_is_read_keeps_every_part(tmp_path, monkeypatch):
    """A part the press stopped reading is not damaged: it must not be removed as if it were."""
    from toolkit.retrieval import embed

    embed.EmbeddingCache(tmp_path, "fingerprint").put(["a", "b"], np.ones((2, 4), np.float32))
    parts = sorted(tmp_path.rglob("part-*"))
    monkeypatch.setattr(embed.np, "load", _pressed_while_opened)
    with pytest.raises(KeyboardInterrupt):
        len(embed.EmbeddingCache(tmp_path, "fingerprint"))
    monkeypatch.undo()
    assert parts and sorted(tmp_path.rglob("part-*")) == parts
    assert len(embed.EmbeddingCache(tmp_path, "fingerprint")) == 2


def _weights_lost_while_pressed() -> None:
    from toolkit.models.weights import WeightsUnavailable

    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    except BaseException as error:  # noqa: BLE001 - as a loader that wraps whatever goes wrong, even a press
        raise WeightsUnavailable(f"cannot load ({type(error).__name__})") from None


@pytest.mark.parametrize("pressed", [_pressed_while_a_class_is_made, _weights_lost_while_pressed],
                         ids=["set_name", "weights"])
def test_a_ctrl_c_wrapped_in_a_strategy_s_error_stops_the_race_not_the_strategy_alone(pressed, tiny_competition,
                                                                                    tmp_path, monkeypatch):
    """A press as a strategy imports its model (Python 3.11 wraps it in RuntimeError when it lands
    in a dataclass's making) or as a loader turns whatever went wrong into 'no weights': the race
    is interrupted, not told that the strategy failed and sent on to the next."""
    from toolkit.race.runs import RaceInterrupted
    from strategies.zero_shot.cnn_zs import CnnZeroShot

    def fit(self, *arguments, **keywords):
        pressed()

    monkeypatch.setattr(CnnZeroShot, "fit", fit)
    with pytest.raises(RaceInterrupted):
        _tiny_race_in_process(tiny_competition, tmp_path, leaderboard=tmp_path / "board.db")
    with Leaderboard(tmp_path / "board.db") as board:
        assert [(run.status, run.reason) for run in board.runs()] == [("failed", "interrupted")]


def test_a_ctrl_c_as_a_run_s_submission_is_saved_leaves_no_file_without_its_row(tiny_competition, tmp_path,
                                                                                 monkeypatch):
    """The press lands the moment the file exists, before the run could take note of it."""
    from toolkit.race import runner
    from toolkit.race.runs import RaceInterrupted

    def saved_then_pressed(*arguments, **keywords):
        path = save_submission(*arguments, **keywords)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        return path

    save_submission = runner.save_submission
    monkeypatch.setattr(runner, "save_submission", saved_then_pressed)
    with pytest.raises(RaceInterrupted):
        _tiny_race_in_process(tiny_competition, tmp_path, leaderboard=tmp_path / "board.db")
    with Leaderboard(tmp_path / "board.db") as board:
        named = {Path(run.submission_path).resolve() for run in board.runs() if run.submission_path}
    written = {path.resolve() for path in (tmp_path / "subs").glob("*.json") if not path.name.endswith("-best.json")}
    assert written and written <= named


class SlowItems(Dataset):
    """Items that take a while, each telling how its worker process treats SIGINT."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        time.sleep(0.05)
        return index, os.getpid(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_ctrl_c_while_the_workers_are_stopped_after_the_loop_is_not_lost():
    """The loop is done and its workers are being stopped (seconds on a busy machine) when the
    press lands: it is raised once they are stopped, not dropped with the race going on (found by
    the 20-moment test under heavy disk writes: a race pressed at 0.75 s ran to its end)."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    stop, pressed = _MultiProcessingDataLoaderIter._shutdown_workers, []

    def pressed_as_they_stop(self):
        if not pressed:                                     # once: torch calls it again as it is collected
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        stop(self)

    loader = DataLoader(SlowItems(), batch_size=2, num_workers=2, collate_fn=list)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", pressed_as_they_stop)
        with pytest.raises(KeyboardInterrupt):
            with worker_batches(loader) as batches:
                for batch in batches:
                    break                                   # the loop ends; the workers are stopped after it
    assert pressed and multiprocessing.active_children() == []


def _swallowed_press() -> None:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except KeyboardInterrupt:
        pass                    # as triton's C extension does when the press lands while it is imported


@pytest.mark.parametrize("workers", [0, 2])
def test_a_press_a_library_swallows_still_stops_the_work_a_batch_later(workers, capsys):
    loader = DataLoader(SlowItems(), batch_size=2, num_workers=workers, collate_fn=list)
    seen = []

    @interruptible("nothing was written")
    def command():
        _swallowed_press()
        with worker_batches(loader) as batches:
            for batch in batches:
                seen.extend(batch)

    with pytest.raises(SystemExit) as exited:     # the handler it leaves is put back by conftest
        command()
    assert exited.value.code == EXIT_CODE and seen == []
    assert capsys.readouterr().out.splitlines() == ["interrupted: nothing was written"]
    assert multiprocessing.active_children() == []


def test_a_command_whose_press_was_swallowed_after_its_last_loop_says_it_was_interrupted(capsys):
    @interruptible("nothing was written")
    def command():
        interrupts.say_kept("best so far written to x.json")
        _swallowed_press()
        return "done"

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == EXIT_CODE
    assert capsys.readouterr().out.splitlines() == ["interrupted: best so far written to x.json"]


def test_loader_workers_ignore_ctrl_c_and_are_stopped_when_the_loop_ends_early():
    loader = DataLoader(SlowItems(), batch_size=2, num_workers=2, collate_fn=list)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with worker_batches(loader) as batches:
            for batch in batches:
                seen.extend(batch)
                if len(seen) == 4:
                    for pid in {pid for _, pid, _ in seen}:
                        os.kill(pid, signal.SIGINT)       # a terminal's Ctrl-C reaches the workers too
                if len(seen) == 12:
                    raise KeyboardInterrupt               # as the main process gets it
    assert all(ignored for _, _, ignored in seen) and len({pid for _, pid, _ in seen}) == 2
    assert [index for index, _, _ in seen] == list(range(12))       # the workers went on after their SIGINT
    assert multiprocessing.active_children() == []


class HandOffReports(Dataset):
    """What a worker's sys.excepthook prints for a broken hand-off and for another error."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        error = [EOFError("the main process went away"), ValueError("a real fault")][index]
        printed = io.StringIO()
        with contextlib.redirect_stderr(printed):
            sys.excepthook(type(error), error, None)
        return printed.getvalue()


def test_leaving_the_loop_early_stops_the_workers_too():
    loader = DataLoader(SlowItems(), batch_size=2, num_workers=2, collate_fn=list)
    with worker_batches(loader) as batches:
        for batch in batches:
            break
    assert multiprocessing.active_children() == []


def test_a_worker_prints_no_traceback_for_a_hand_off_the_interrupted_main_process_broke_off():
    loader = DataLoader(HandOffReports(), batch_size=1, num_workers=1, collate_fn=list)
    with worker_batches(loader) as batches:
        [broken], [other] = list(batches)
    assert broken == "" and "ValueError: a real fault" in other


def test_a_ctrl_c_while_the_workers_start_is_held_then_raised_and_they_are_stopped(monkeypatch):
    loader = DataLoader(SlowItems(), batch_size=2, num_workers=2, collate_fn=list)
    start_workers = DataLoader.__iter__

    def pressed_meanwhile(self):
        os.kill(os.getpid(), signal.SIGINT)               # Ctrl-C while the worker processes are started
        return start_workers(self)

    monkeypatch.setattr(DataLoader, "__iter__", pressed_meanwhile)
    entered = []
    with pytest.raises(KeyboardInterrupt):
        with worker_batches(loader) as batches:
            entered.append(batches)
    assert entered == [] and multiprocessing.active_children() == []


def test_ctrl_c_is_how_the_reference_scorer_is_stopped_so_it_says_stopped_and_exits_0(tmp_path):
    answers = tmp_path / "answers.json"
    answers.write_text('{"query": {"q.jpg": "a"}, "gallery": {"g.jpg": "a"}}')
    with InvokeForks(ENVIRONMENT) as forks:
        command = forks.start(["serve-scorer", "--answers", str(answers), "--port", "0"], tmp_path / "serve")
        listening = time.monotonic() + 120
        while "Ctrl-C stops it" not in command.stdout and command.wait(timeout=0.1) is None \
                and time.monotonic() < listening:
            pass
        assert command.code is None, command.stdout + command.stderr
        os.killpg(command.pid, signal.SIGINT)
        assert command.wait(timeout=EXIT_SECONDS) == 0, command.stdout + command.stderr
    assert command.stdout.splitlines()[-1] == "stopped" and command.stderr == "", command.stdout + command.stderr
