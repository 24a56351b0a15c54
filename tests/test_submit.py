"""race -> invoke submit -> invoke leaderboard as a team runs them: real subprocesses, a real
leaderboard file, the reference scorer and misbehaving servers on loopback."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT
from tests.racing import race
from tests.test_server import ANSWERS, AnswersHtml, NeverAnswers, _submission, _unused_port, misbehaving
from toolkit.data.dataset import find_competition
from toolkit.records.store import Leaderboard
from toolkit.retrieval.metrics import load_answers, score_submission
from toolkit.submit.scorer import ReferenceScorer
from toolkit.submit.submission import load_submission


def invoke(*arguments, env):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def environment(tmp_path):
    """The leaderboard in tmp_path, no configuration file, no server URL or group yet."""
    env = {**os.environ, "COLUMNS": "200", "RETRIEVAL_RACE_LEADERBOARD": str(tmp_path / "leaderboard.db"),
           "RETRIEVAL_RACE_CONFIG": str(tmp_path / "no-such-config.toml")}
    for variable in ("RETRIEVAL_RACE_URL", "RETRIEVAL_RACE_GROUP"):
        env.pop(variable, None)
    return env


@pytest.fixture
def scorer():
    server = ReferenceScorer(ANSWERS, port=0)
    server.serve_in_background()
    yield server
    server.shutdown()
    server.server_close()


def test_race_then_submit_best_records_the_server_score_beside_validation(tmp_path, synthetic_competition,
                                                                          environment):
    competition = find_competition(synthetic_competition)
    specs = [("cnn-zs", {"pretrained": False, "image_size": 64}), ("clip-zs", {"model": "ViT-B-32", "pretrained": "no-such-tag"})]
    result = race(competition, specs, submissions_dir=tmp_path / "subs", cache_dir=tmp_path / "cache",
                      num_workers=0, show_progress=False, leaderboard=tmp_path / "leaderboard.db")
    best, failed = result.runs
    assert (best.status, failed.status) == ("finished", "failed")
    answers_file = synthetic_competition / "answers.json"
    expected = score_submission(load_submission(best.submission), load_answers(answers_file)).score

    scorer = ReferenceScorer(load_answers(answers_file), port=0)
    scorer.serve_in_background()
    env = {**environment, "RETRIEVAL_RACE_URL": scorer.url, "RETRIEVAL_RACE_GROUP": "team"}
    try:
        sent = invoke("submit", "--best", env=env)
    finally:
        scorer.shutdown()
        scorer.server_close()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "checked against the queries and gallery" in sent.stdout
    assert f"server score {expected:.1f} for run {best.run_id}" in sent.stdout
    assert f"{expected:.1f}" in invoke("score", str(best.submission), "--answers", str(answers_file), env=env).stdout

    with Leaderboard(tmp_path / "leaderboard.db") as board:
        summary = next(summary for summary in board.summaries(result.race_id) if summary.run.id == best.run_id)
        assert summary.server_score == pytest.approx(expected)
        assert summary.run.validation_score == pytest.approx(best.validation.score)
        assert summary.last_attempt.group_name == "team" and summary.last_attempt.url == scorer.url

    shown = invoke("leaderboard", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [best_row] = [line for line in shown.stdout.splitlines() if "cnn-zs[image_size=64,pretrained=False]" in line]
    assert f"{best.validation.score:.1f}" in best_row and f"{expected:.1f}" in best_row
    [failed_row] = [line for line in shown.stdout.splitlines() if "clip-zs[" in line]
    assert "failed" in failed_row and "no-such-tag" in failed_row

    nothing = invoke("submit", "--run", str(failed.run_id), env=env)
    assert nothing.returncode == 1 and "has no submission file" in nothing.stdout


def _write(path, content):
    path.write_text(json.dumps(content))
    return str(path)


@pytest.mark.parametrize("setting, message", [
    ({"RETRIEVAL_RACE_GROUP": "team"}, "no server URL: pass --url URL, set RETRIEVAL_RACE_URL, or write server_url"),
    ({"RETRIEVAL_RACE_URL": "http://127.0.0.1:1/retrieval/"}, "no group name: pass --group NAME, set RETRIEVAL_RACE_GROUP"),
])
def test_missing_settings_say_how_to_set_them(tmp_path, environment, setting, message):
    result = invoke("submit", "--file", _write(tmp_path / "a.json", _submission()), env={**environment, **setting})
    assert result.returncode == 1 and message in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("content, message", [
    (None, "no such submission file"),
    ({**_submission(), "q0.jpg": ["g00.jpg"] * 10}, "invalid submission: q0.jpg: repeated gallery names"),
    ({**_submission(), "q0.jpg": ["g00.jpg"]}, "q0.jpg: 1 results, expected 10"),
    ([1, 2], "expected a JSON object"),
])
def test_a_missing_or_invalid_file_is_refused_before_anything_is_sent(tmp_path, environment, content, message):
    path = tmp_path / "a.json"
    if content is not None:
        _write(path, content)
    env = {**environment, "RETRIEVAL_RACE_URL": "http://127.0.0.1:1/retrieval/", "RETRIEVAL_RACE_GROUP": "team"}
    result = invoke("submit", "--file", str(path), env=env)
    assert result.returncode == 1 and message in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    with Leaderboard(tmp_path / "leaderboard.db") as board:
        assert board.runs() == []


def test_a_server_down_is_recorded_and_the_send_retried_later_from_the_leaderboard(tmp_path, environment, scorer):
    file = _write(tmp_path / "by-hand.json", _submission())
    down = {**environment, "RETRIEVAL_RACE_GROUP": "team"}
    failed = invoke("submit", "--file", file, "--url", f"http://127.0.0.1:{_unused_port()}/retrieval/",
                    "--retries", "0", env=down)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "cannot reach" in failed.stdout and "invoke submit --run 1" in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr

    dry = invoke("submit", "--run", "1", "--url", scorer.url, "--dry-run", env=down)
    assert dry.returncode == 0 and "nothing sent" in dry.stdout
    again = invoke("submit", "--run", "1", "--url", scorer.url, env=down)
    expected = score_submission(_submission(), ANSWERS).score
    assert again.returncode == 0 and f"server score {expected:.1f}" in again.stdout
    with Leaderboard(tmp_path / "leaderboard.db") as board:
        [run] = board.runs()
        assert (run.race_id, run.status, run.name) == (None, "manual", "by-hand.json")
        assert [(attempt.state, attempt.server_score) for attempt in board.submissions()] == \
               [("failed", None), ("scored", pytest.approx(expected))]
    shown = invoke("leaderboard", env=down)           # no race yet: the runs submitted by hand
    assert "by-hand.json" in shown.stdout and f"{expected:.1f}" in shown.stdout


@pytest.mark.parametrize("handler, options, message", [
    (NeverAnswers, ("--timeout", "0.5"), "did not answer within 0.5s"),
    (AnswersHtml, (), "the server refused the submission: <html><body>Group 'team' is not registered"),
])
def test_a_misbehaving_server_gets_a_clear_message_and_a_recorded_attempt(tmp_path, environment, handler, options,
                                                                          message):
    file = _write(tmp_path / "a.json", _submission())
    with misbehaving(handler) as (url, _):
        result = invoke("submit", "--file", file, "--url", url, "--group", "team", *options, env=environment)
    assert result.returncode == 1 and message in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    with Leaderboard(tmp_path / "leaderboard.db") as board:
        [attempt] = board.submissions()
        assert attempt.state == "failed" and message in attempt.error
