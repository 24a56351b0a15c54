"""The invoke tasks as a user runs them: real subprocesses, real files."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT


def invoke(*arguments, cwd=PROJECT, timeout=600):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def test_strategies_lists_each_with_offline_availability():
    result = invoke("strategies")
    assert result.returncode == 0, result.stderr
    for name in ("clip-zs", "cnn-zs", "face-zs"):
        assert name in result.stdout
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert "yes" in lines["face-zs"] and "yes" in lines["cnn-zs"]


def test_race_then_score_from_the_command_line(tmp_path, synthetic_competition):
    submissions = tmp_path / "subs"
    race = invoke("race", "--data", str(synthetic_competition), "--strategies", "cnn-zs[pretrained=false,image_size=64]",
                  "--submissions", str(submissions), "--workers", "0", cwd=tmp_path)
    assert race.returncode == 0, race.stdout + race.stderr
    assert "best by validation" in race.stdout
    [written] = list(submissions.glob("*-cnn-zs-*.json"))
    score = invoke("score", str(written), "--answers", str(synthetic_competition / "answers.json"))
    assert score.returncode == 0, score.stdout + score.stderr
    assert "mAP@10" in score.stdout and "Top1" in score.stdout


def test_score_of_a_perfect_submission_is_1000(tmp_path):
    answers = {"query": {"q.jpg": "a"}, "gallery": {"g.jpg": "a", "h.jpg": "b"}}
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    (tmp_path / "submission.json").write_text(json.dumps({"q.jpg": ["g.jpg", "h.jpg"]}))
    result = invoke("score", str(tmp_path / "submission.json"), "--answers", str(tmp_path / "answers.json"))
    assert result.returncode == 0 and "1000.0" in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (("race", "--data", "/no/such/folder"), "/no/such/folder"),
    (("race", "--data", ".", "--strategies", "nope"), "unknown strategy"),
    (("race", "--data", ".", "--budget", "soon"), "cannot read duration"),
    (("score", "/no/such.json", "--answers", "/no/answers.json"), "no such submission file"),
])
def test_bad_input_gets_a_clear_message_and_exit_code(arguments, message):
    result = invoke(*arguments)
    assert result.returncode == 1
    assert "error:" in result.stdout and message in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_run_from_a_sub_folder_every_default_path_is_in_the_project_folder(tmp_path):
    """The project folder is the one holding retrieval-race.toml (or tasks.py), wherever the command runs."""
    project, deeper = tmp_path / "project", tmp_path / "project" / "notebooks" / "deeper"
    deeper.mkdir(parents=True)
    (project / "retrieval-race.toml").write_text('leaderboard = "boards/lb.db"\n')
    environment = {name: value for name, value in os.environ.items() if name != "RETRIEVAL_RACE_LEADERBOARD"}
    environment.update(COLUMNS="200", RETRIEVAL_RACE_CACHE=str(tmp_path / "cache"))

    def run(*arguments):
        result = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments], cwd=deeper,
                                capture_output=True, text=True, timeout=900, env=environment)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    run("demo", "--strategies", "cnn-zs[pretrained=false,image_size=64]")
    shown = run("show", "--queries", "2")
    run("report", "--queries", "2", "--test-queries", "1")
    assert list((project / "reports").glob("race-*.html"))
    assert (project / "data" / "demo" / "answers.json").is_file()
    assert list((project / "submissions").glob("*-cnn-zs-*.json")) and list((project / "submissions").glob("*-best.json"))
    assert (project / "boards" / "lb.db").is_file() and list((project / "reports").glob("*.png")), shown.stdout
    assert list(deeper.iterdir()) == []                         # nothing written where the command ran


@pytest.mark.parametrize("pattern, said", [("*_zz.*", "matches none of the"), ("*", "matches all the")])
def test_a_gallery_pattern_that_marks_nothing_is_an_error(synthetic_competition, pattern, said):
    result = invoke("race", "--data", str(synthetic_competition), "--gallery-pattern", pattern,
                    "--strategies", "cnn-zs[pretrained=false,image_size=64]")
    output = result.stdout.strip()
    assert result.returncode == 1 and output.startswith(f"error: --gallery-pattern {pattern} {said}"), output
    assert "\n" not in output and "Traceback" not in output + result.stderr
