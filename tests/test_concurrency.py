"""Two races and two submits at once, as a team might start them: four `invoke` processes writing
one leaderboard file and one submissions folder, the submits scored by the reference scorer on
loopback. Every run keeps its own file, every row is its own run, nothing is lost."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT
from toolkit.data.dataset import find_competition
from toolkit.records.store import Leaderboard
from toolkit.retrieval.metrics import load_answers, score_submission
from toolkit.submit.scorer import ReferenceScorer
from toolkit.submit.submission import load_submission, validate_submission

STRATEGY = "cnn-zs[pretrained=False,image_size=64]"    # both races the same: the same file names


def _invoke(*arguments, env):
    return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _by_hand(competition, shift: int) -> dict:
    """A valid submission no race wrote: each query's list is the gallery rotated by `shift`."""
    gallery = sorted(path.name for path in competition.gallery)
    return {query.name: (gallery[shift:] + gallery[:shift])[:10] for query in competition.queries}


def test_processes_saving_at_once_under_one_label_never_share_a_file(tmp_path):
    saver = textwrap.dedent("""
        import sys, time
        from toolkit.submit.submission import save_submission
        time.sleep(max(0.0, float(sys.argv[3]) - time.time()))       # all start saving together
        for number in range(40):
            save_submission({"writer": [sys.argv[2], str(number)]}, sys.argv[1], "best" if number % 2 else "cnn-zs")
        """)
    start_at = str(time.time() + 2.0)
    savers = [subprocess.Popen([sys.executable, "-c", saver, str(tmp_path), writer, start_at], cwd=PROJECT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for writer in "abc"]
    for process in savers:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stdout + stderr
    contents = sorted(tuple(load_submission(path)["writer"]) for path in tmp_path.iterdir())
    assert contents == sorted((writer, str(number)) for writer in "abc" for number in range(40))


@pytest.fixture
def scorer(synthetic_competition):
    server = ReferenceScorer(load_answers(synthetic_competition / "answers.json"), port=0)
    server.serve_in_background()
    yield server
    server.shutdown()
    server.server_close()


def test_two_races_and_two_submits_at_once_lose_nothing(tmp_path, synthetic_competition, scorer):
    competition = find_competition(synthetic_competition)
    board_file, submissions = tmp_path / "leaderboard.db", tmp_path / "submissions"
    env = {**os.environ, "COLUMNS": "200", "RETRIEVAL_RACE_LEADERBOARD": str(board_file),
           "RETRIEVAL_RACE_CONFIG": str(tmp_path / "no-such-config.toml"),
           "RETRIEVAL_RACE_URL": scorer.url, "RETRIEVAL_RACE_GROUP": "team"}
    hand_files = []
    for shift in (0, 3):
        path = tmp_path / "by-hand" / f"rotated-{shift}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_by_hand(competition, shift)))
        hand_files.append(path)

    # each race its own embedding cache: this test is about the leaderboard and the submissions folder
    processes = [_invoke("race", "--data", str(synthetic_competition), "--strategies", STRATEGY, "--workers", "0",
                         "--no-rerank", "--flip", "off", "--submissions", str(submissions),
                         env={**env, "RETRIEVAL_RACE_CACHE": str(tmp_path / cache)})
                 for cache in ("cache-a", "cache-b")]
    processes += [_invoke("submit", "--file", str(path), "--retries", "0", env=env) for path in hand_files]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stdout + stderr
        assert "not recorded" not in stdout + stderr and "Traceback" not in stdout + stderr

    with Leaderboard(board_file) as board:
        races, runs, attempts = board.races(), board.runs(), board.submissions()
    race_runs = [run for run in runs if run.race_id is not None]
    assert len(races) == 2 and all(race.ended_at is not None for race in races)
    assert sorted(run.race_id for run in race_runs) == sorted(race.id for race in races)   # one run a race
    assert all(run.strategy == "cnn-zs" and run.status == "finished" for run in race_runs)

    written = sorted(submissions.glob("*.json"))
    assert sorted(Path(run.submission_path) for run in race_runs if run.submission_path) == \
           sorted(path.resolve() for path in written if not path.name.endswith("-best.json"))
    assert len(written) == 4 and sum(path.name.endswith("-best.json") for path in written) == 2
    assert not [path for path in submissions.iterdir() if path.suffix != ".json"]     # no temporary left
    for path in written:
        validate_submission(load_submission(path), [query.name for query in competition.queries],
                            [image.name for image in competition.gallery])

    manual = sorted((run for run in runs if run.race_id is None), key=lambda run: run.name)
    assert [(run.status, Path(run.submission_path)) for run in manual] == \
           [("manual", path.resolve()) for path in hand_files]
    truth = load_answers(synthetic_competition / "answers.json")
    assert sorted((attempt.run_id, attempt.state, attempt.server_score) for attempt in attempts) == \
           sorted((run.id, "scored", pytest.approx(score_submission(load_submission(path), truth).score))
                  for run, path in zip(manual, hand_files))
