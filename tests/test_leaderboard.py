"""The leaderboard on a real SQLite file: persistence across processes, concurrent writers,
in-place schema upgrades, and the race recording its runs."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import event

from tests.conftest import PROJECT
from tests.racing import race as run_race
from toolkit.data.dataset import find_competition
from toolkit.records.migrations import SCHEMA_VERSION
from toolkit.records.store import TABLES, Leaderboard, LeaderboardError
from toolkit.views.leaderboard import leaderboard_table


def _python(code: str, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *arguments], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stdout + stderr
    return stdout


def test_rows_written_by_another_process_are_read_back(tmp_path):
    path = tmp_path / "board.db"
    _finish(_python("""
        import sys
        from toolkit.records.store import Leaderboard
        with Leaderboard(sys.argv[1]) as board:
            race = board.start_race("/data/comp", "abc123", budget_seconds=1800, options={"seed": 0})
            run = board.add_run(race_id=race.id, name="cnn-zs[image_size=64]", strategy="cnn-zs",
                                options={"image_size": 64}, status="finished", validation_score=512.5,
                                validation_top1=0.5, submission_path="/subs/a.json")
            attempt = board.start_submission(run.id, "http://server/retrieval/", "team")
            board.finish_submission(attempt.id, "scored", http_status=200, server_score=600.0, tries=1)
        """, str(path)))
    with Leaderboard(path) as board:
        race = board.latest_race()
        assert (race.data_path, race.data_fingerprint, race.budget_seconds) == ("/data/comp", "abc123", 1800)
        assert race.torch_version and race.cpu and race.started_at is not None
        [run] = board.runs(race.id)
        assert (run.name, run.options, run.validation_score) == ("cnn-zs[image_size=64]", '{"image_size": 64}', 512.5)
        [summary] = board.summaries(race.id)
        assert summary.server_score == 600.0 and summary.attempts == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    path = tmp_path / "board.db"
    writer = """
        import sys, time
        from toolkit.records.store import Leaderboard
        board = Leaderboard(sys.argv[1])
        time.sleep(max(0.0, float(sys.argv[3]) - time.time()))       # both start writing together
        for number in range(50):
            board.add_run(name=f"{sys.argv[2]}-{number}", status="finished", validation_score=number)
        """
    start_at = str(time.time() + 2.0)
    writers = [_python(writer, str(path), name, start_at) for name in ("a", "b")]
    for process in writers:
        _finish(process)
    with Leaderboard(path) as board:
        names = [run.name for run in board.runs()]
    assert len(names) == 100 and len(set(names)) == 100
    assert {name.split("-")[0] for name in names} == {"a", "b"}


@pytest.mark.parametrize("old_version", [0, 1])
def test_an_older_schema_is_upgraded_in_place_keeping_its_rows(tmp_path, old_version):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:   # an older layout: fewer columns, no server_submission table
        connection.executescript(f"""
            CREATE TABLE race (id INTEGER PRIMARY KEY, started_at DATETIME NOT NULL, data_path VARCHAR);
            CREATE TABLE run (id INTEGER PRIMARY KEY, race_id INTEGER, name VARCHAR NOT NULL,
                              status VARCHAR NOT NULL, validation_score FLOAT, submission_path VARCHAR);
            INSERT INTO race VALUES (1, '2025-06-01 10:00:00.000000', '/data/old');
            INSERT INTO run VALUES (1, 1, 'face-zs', 'finished', 700.5, '/subs/old.json');
            INSERT INTO run VALUES (2, 1, 'clip-zs', 'failed', NULL, NULL);
            PRAGMA user_version = {old_version};
            """)
    with Leaderboard(path) as board:
        assert board.schema_version == SCHEMA_VERSION
        assert [(run.name, run.status, run.validation_score) for run in board.runs()] == \
               [("face-zs", "finished", 700.5), ("clip-zs", "failed", None)]
        assert board.best_run().name == "face-zs" and board.latest_race().data_path == "/data/old"
        attempt = board.start_submission(1, "http://server/retrieval/", "team")   # the new table works
        board.finish_submission(attempt.id, "scored", http_status=200, server_score=650.0)
        board.add_run(race_id=1, name="cnn-zs", status="finished", validation_score=10.0, fit_seconds=1.5)
        assert leaderboard_table(board.summaries(1), "old race").row_count == 3
    connection = sqlite3.connect(path)
    for table in TABLES:
        present = {row[1] for row in connection.execute(f'PRAGMA table_info("{table.name}")')}
        assert present == {column.name for column in table.columns}
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("SELECT count(*) FROM run").fetchone()[0] == 3
    with Leaderboard(path) as board:                                           # opening again changes nothing
        assert len(board.runs()) == 3 and board.summaries(1)[0].server_score == 650.0


def test_a_file_that_is_not_a_database_gets_a_clear_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a leaderboard " * 200)
    with pytest.raises(LeaderboardError, match="notes.db: cannot open the leaderboard"):
        Leaderboard(path)


def test_best_run_and_order_follow_the_validation_score_of_the_latest_race(tmp_path):
    with Leaderboard(tmp_path / "board.db") as board:
        old = board.start_race("/data", machine={})
        board.add_run(race_id=old.id, name="old-best", validation_score=999.0, submission_path="/s/o.json")
        race = board.start_race("/data", machine={})
        board.add_run(race_id=race.id, name="low", validation_score=100.0, submission_path="/s/l.json")
        board.add_run(race_id=race.id, name="high", validation_score=300.0, submission_path="/s/h.json")
        board.add_run(race_id=race.id, name="skipped", status="skipped", reason="estimated 99s, 1s left")
        board.add_run(race_id=race.id, name="no-file", validation_score=900.0)
        assert board.best_run().name == "high"
        assert [summary.run.name for summary in board.summaries(race.id)] == ["no-file", "high", "low", "skipped"]
        assert len(board.summaries()) == 5


def test_the_race_records_each_run_as_it_ends_skipped_ones_too(tmp_path, synthetic_competition):
    competition = find_competition(synthetic_competition)
    result = run_race(competition, [("face-zs", {})], budget_seconds=0.001, submissions_dir=tmp_path / "subs",
                      cache_dir=tmp_path / "cache", num_workers=0, show_progress=False,
                      leaderboard=tmp_path / "board.db")
    assert result.race_id is not None and result.runs[0].run_id is not None
    with Leaderboard(tmp_path / "board.db") as board:
        race = board.race(result.race_id)
        assert race.data_path == str(competition.root.resolve()) and race.budget_seconds == 0.001
        assert len(race.data_fingerprint) == 16 and race.ended_at is not None
        [run] = board.runs(race.id)
        assert (run.name, run.strategy, run.status) == ("face-zs", "face-zs", "skipped")
        assert "estimated" in run.reason and run.submission_path is None


def _open_at_once(path, barrier, failures):
    barrier.wait()
    try:
        Leaderboard(path).close()
    except LeaderboardError as error:
        failures.put(str(error))


def test_processes_opening_one_new_file_at_once_all_open_it(tmp_path):
    """Switching a new file to WAL takes an exclusive lock without SQLite's busy handler, so of two
    processes creating one leaderboard at the same moment, one got "database is locked" (4 of 30
    tries with two processes); opening waits instead."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for attempt in range(40):
        path = tmp_path / f"new-{attempt}.db"
        barrier = context.Barrier(4)
        processes = [context.Process(target=_open_at_once, args=(path, barrier, failures)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(60)
            assert process.exitcode == 0
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == []


@pytest.mark.parametrize("moment", ["before_cursor_execute", "after_cursor_execute", "commit"])
def test_a_ctrl_c_while_a_run_is_recorded_leaves_the_row_written_and_the_file_free(tmp_path, moment):
    """The press lands inside the transaction. What runs on the way out (recording the run that
    was kept) must find the write lock free at once, not wait out the busy timeout and fail."""
    path = tmp_path / "board.db"
    with Leaderboard(path) as board:
        race = board.start_race("/data", machine={})
        pressed = []

        def press(*arguments):
            if not pressed:
                pressed.append(moment)
                os.kill(os.getpid(), signal.SIGINT)

        event.listen(board.engine, moment, press)
        with pytest.raises(KeyboardInterrupt):
            board.record_run(race.id, "face-zs", name="face-zs", status="finished", validation_score=1.0)
        assert pressed == [moment]
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")      # "database is locked" while the lock is kept
            other.rollback()
        finally:
            other.close()
        event.remove(board.engine, moment, press)
        assert [(run.run_key, run.status) for run in board.runs(race.id)] == [("face-zs", "finished")]
