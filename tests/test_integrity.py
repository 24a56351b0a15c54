"""Nothing lost, nothing recorded twice: submission files that never collide or overwrite, a run
recorded once however often the race records it (a Ctrl-C just after the commit included), an
attempt interrupted while sending that does not stay "sending", and a damaged leaderboard page
that gets one clear line. Real files, a real SQLite file, real subprocesses on loopback."""
import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest
from sqlalchemy import event
from sqlmodel import Session

from tests.conftest import PROJECT
from tests.racing import race
from tests.test_server import NeverAnswers, _submission, misbehaving
from tests.test_submit import environment  # noqa: F401  (the fixture: leaderboard in tmp_path, no config, no server)
from toolkit.data.dataset import find_competition
from toolkit.race.runs import RaceInterrupted, StrategyRun
from toolkit.records.recorder import RaceRecorder
from toolkit.records.store import Leaderboard, LeaderboardError, Run
from toolkit.submit.submission import load_submission, save_submission


def _invoke(*arguments, env, **popen):
    return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


# --- submission files --------------------------------------------------------------------------


def test_files_saved_in_the_same_second_under_one_label_are_all_kept(tmp_path):
    when = 1_800_000_000.0
    saved = [save_submission(_submission(shift), tmp_path, label, when=when)
             for shift in range(4) for label in ("cnn-zs", "best")]
    assert len(set(saved)) == len(saved) == len(list(tmp_path.iterdir()))
    for number, path in enumerate(saved):
        assert load_submission(path) == _submission(number // 2)
    assert sum(path.name.endswith("-best.json") for path in saved) == 4
    assert sorted(path.name for path in saved) == sorted(path.name for path in tmp_path.glob("*.json"))


def test_a_save_that_fails_half_way_leaves_no_file_behind(tmp_path):
    before = save_submission(_submission(), tmp_path, "cnn-zs")
    broken = {**_submission(), "q0.jpg": [object()]}            # json cannot write it: fails half way
    with pytest.raises(TypeError):
        save_submission(broken, tmp_path, "cnn-zs")
    assert list(tmp_path.iterdir()) == [before] and load_submission(before) == _submission()


# --- a run recorded once -------------------------------------------------------------------------


def test_a_run_recorded_again_updates_its_row(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    recorder = RaceRecorder(tmp_path / "board.db", competition, 60.0, options={})
    run = StrategyRun(label="cnn-zs", strategy="cnn-zs", status="failed", reason="interrupted")
    recorder.run_ended(run)
    first = run.run_id
    run.run_id, run.reason = None, "interrupted, then recorded again"   # the id never came back: Ctrl-C
    recorder.run_ended(run)
    twin = StrategyRun(label="cnn-zs", strategy="cnn-zs", status="skipped")   # same label, another run
    recorder.run_ended(twin)
    recorder.race_ended(1.0)
    with Leaderboard(tmp_path / "board.db") as board:
        rows = board.runs(recorder.race_id)
    assert [(row.id, row.name, row.status, row.reason) for row in rows] == \
           [(first, "cnn-zs", "failed", "interrupted, then recorded again"), (twin.run_id, "cnn-zs", "skipped", None)]
    assert run.run_id == first != twin.run_id


@pytest.fixture
def interrupt_after_the_first_run_is_committed():
    """Ctrl-C landing just after the first run row's commit, before the recorder hears it went in."""
    added = []

    def note_runs(session, *_):
        added.extend(row for row in session.new if isinstance(row, Run))

    def interrupt(session):
        if added and not interrupt.pressed:
            interrupt.pressed = True
            raise KeyboardInterrupt
    interrupt.pressed = False
    event.listen(Session, "after_flush", note_runs)
    event.listen(Session, "after_commit", interrupt)
    yield interrupt
    event.remove(Session, "after_flush", note_runs)
    event.remove(Session, "after_commit", interrupt)


def test_ctrl_c_just_after_a_run_is_committed_records_it_once(tmp_path, synthetic_competition,
                                                               interrupt_after_the_first_run_is_committed):
    competition = find_competition(synthetic_competition)
    specs = [("face-zs", {}), ("cnn-zs", {"pretrained": False, "image_size": 64})]
    with pytest.raises(RaceInterrupted) as interrupted:
        race(competition, specs, budget_seconds=0.001, submissions_dir=tmp_path / "subs",
             cache_dir=tmp_path / "cache", num_workers=0, show_progress=False, leaderboard=tmp_path / "board.db")
    assert interrupt_after_the_first_run_is_committed.pressed
    result = interrupted.value.result
    with Leaderboard(tmp_path / "board.db") as board:
        rows = board.runs(result.race_id)
    assert sorted(row.name for row in rows) == sorted(run.label for run in result.runs)
    assert sorted(row.id for row in rows) == sorted(run.run_id for run in result.runs)


# --- an attempt interrupted while sending --------------------------------------------------------


def _sending_attempts(path):
    if not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        try:
            return connection.execute("SELECT id FROM server_submission WHERE state = 'sending'").fetchall()
        except sqlite3.OperationalError:                      # the tables are not made yet
            return []


def test_ctrl_c_while_the_server_has_not_answered_records_the_attempt_as_interrupted(tmp_path, environment):
    file = tmp_path / "a.json"
    file.write_text(json.dumps(_submission()))
    with misbehaving(NeverAnswers) as (url, server):
        sending = _invoke("submit", "--file", str(file), "--url", url, "--group", "team", "--timeout", "60",
                          env=environment)
        deadline = time.monotonic() + 60                      # a generous bound, not a measurement
        while not (server.hits and _sending_attempts(tmp_path / "leaderboard.db")) and time.monotonic() < deadline:
            assert sending.poll() is None, sending.communicate()
            time.sleep(0.05)
        sending.send_signal(signal.SIGINT)
        stdout, stderr = sending.communicate(timeout=60)
    assert sending.returncode != 0, stdout + stderr
    with Leaderboard(tmp_path / "leaderboard.db") as board:
        [attempt] = board.submissions()
    assert attempt.state == "failed", stdout + stderr
    assert "interrupted" in attempt.error and attempt.ended_at is not None


# --- a damaged leaderboard -----------------------------------------------------------------------


def _damage_a_middle_page(path):
    with closing(sqlite3.connect(path)) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 8 and not path.with_name(path.name + "-wal").exists()
    with open(path, "r+b") as stream:
        stream.seek(page_size * (pages // 2))
        stream.write(bytes(range(256)) * (page_size // 256))


def _board_with_many_runs(path):
    with Leaderboard(path) as board:
        race_row = board.start_race("/data/comp", machine={})
        for number in range(300):
            board.add_run(race_id=race_row.id, name=f"cnn-zs[image_size={number}]", status="finished",
                          validation_score=float(number), notes="a note long enough to fill pages " * 4,
                          submission_path=f"/subs/{number}.json")


def test_a_damaged_page_gives_one_clear_line_in_the_leaderboard(tmp_path, environment):
    path = tmp_path / "leaderboard.db"
    _board_with_many_runs(path)
    _damage_a_middle_page(path)
    shown = _invoke("leaderboard", "--all", env=environment)
    stdout, stderr = shown.communicate(timeout=120)
    assert shown.returncode == 1, stdout + stderr
    assert "Traceback" not in stdout + stderr and "sqlalchemy" not in stdout + stderr
    [line] = [line for line in (stdout + stderr).splitlines() if line.strip()]
    assert str(path) in line and "damaged" in line


def test_damage_found_after_the_file_opened_is_a_leaderboard_error_too(tmp_path):
    path = tmp_path / "board.db"
    _board_with_many_runs(path)
    with Leaderboard(path) as board:                       # opens whole; damaged while it is open
        board.engine.dispose()                             # (its connections closed: no page cached)
        _damage_a_middle_page(path)
        with pytest.raises(LeaderboardError, match="cannot read or write the leaderboard: the file is damaged") \
                as fault:
            board.summaries()
    assert str(fault.value).startswith(f"{path}: ")
