"""The command line as a person first meets it: `invoke TASK --help` (and -h) after every task,
each option's default in the help, and a bad number is one line, exit 1, no traceback. Each command
is a real process running invoke over tasks.py (forked from one that imported it once:
tests/invoke_forks.py); two are plain `python -m invoke` subprocesses as well."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT
from tests.invoke_forks import InvokeForks

TASKS = ("demo", "race", "score", "leaderboard", "submit", "serve-scorer", "strategies", "download", "prefetch",
         "doctor", "show", "report", "test")
POSITIONAL = {"score": "--submission", "download": "--url"}   # given without their flag; help names them anyway


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    board = tmp_path_factory.mktemp("board") / "leaderboard.db"
    with InvokeForks({"RETRIEVAL_RACE_LEADERBOARD": str(board), "COLUMNS": "100"}) as forks:
        yield forks


def run(forks, arguments, folder):
    command = forks.start(list(arguments), folder)
    assert command.wait(timeout=120) is not None, f"invoke {' '.join(arguments)} still running"
    return command


def option_blocks(help_text: str) -> dict[str, str]:
    """'--seed' -> its help (the lines of invoke's Options section that belong to it), whitespace collapsed."""
    options = help_text.split("Options:", 1)[1] if "Options:" in help_text else ""
    blocks, current = {}, None
    for line in options.splitlines():
        found = re.match(r"  (?:-\w(?: \w+)?, )?(--(?:\[no-\])?[\w-]+)", line)   # continuations sit deeper
        if found:
            current = found.group(1).replace("[no-]", "")
            blocks[current] = line
        elif current:
            blocks[current] += " " + line
    return {flag: " ".join(text.split()) for flag, text in blocks.items()}


@pytest.mark.parametrize("task", TASKS)
def test_help_after_every_task_shows_each_default(forks, tmp_path, task):
    for flag in ("--help", "-h"):
        shown = run(forks, [task, flag], tmp_path / flag)
        assert shown.code == 0, shown.stdout + shown.stderr
        assert f"] {task} [" in shown.stdout and "Traceback" not in shown.stdout + shown.stderr
    blocks = option_blocks(shown.stdout)
    for flag, text in blocks.items():
        if flag != POSITIONAL.get(task):
            assert "default" in text or "(required)" in text, f"invoke {task} --help: {flag} says no default: {text}"
    assert not re.search(r"(^|\s)-h[ ,]", shown.stdout.split("Options:", 1)[-1]), "an option takes -h"


def test_help_names_the_defaults_themselves(forks, tmp_path):
    race = option_blocks(run(forks, ["race", "--help"], tmp_path / "race").stdout)
    squeezed = {flag: re.sub(r"\s+", "", text) for flag, text in race.items()}
    assert "(default:face-zs,adapter,cnn-zs,clip-zs)" in squeezed["--strategies"]
    assert "(default:0)" in squeezed["--seed"] and "(default:0.2)" in squeezed["--held-out"]
    assert "(default:on)" in squeezed["--rerank"] and "(required)" in squeezed["--data"]
    show = option_blocks(run(forks, ["show", "--help"], tmp_path / "show").stdout)
    assert "(default: 8)" in show["--queries"] and "(default: off)" in show["--worst"]
    serve = option_blocks(run(forks, ["serve-scorer", "--help"], tmp_path / "serve").stdout)
    assert "(default: 3001)" in serve["--port"] and "(default: 127.0.0.1)" in serve["--host"]


@pytest.mark.parametrize("arguments", [("race", "--help"), ("score", "--help"), ("serve-scorer", "-h")])
def test_help_in_a_plain_invoke_subprocess(tmp_path, arguments):
    result = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "100"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Options:" in result.stdout and ("(default:" in result.stdout or "(required)" in result.stdout)


BAD_NUMBERS = [
    (("race", "--data", ".", "--seed", "abc"), "--seed abc"),
    (("race", "--data", ".", "--held-out", "abc"), "--held-out abc"),
    (("race", "--data", ".", "--held-out", "1.5"), "--held-out 1.5"),
    (("race", "--data", ".", "--workers", "abc"), "--workers abc"),
    (("race", "--data", ".", "--workers", "-1"), "--workers -1"),
    (("race", "--data", ".", "--budget", "90"), "--budget 90: give a unit"),
    (("race", "--data", ".", "--budget", "0m"), "--budget 0m"),
    (("show", "--queries", "abc"), "--queries abc"),
    (("show", "--queries", "0"), "--queries 0"),
    (("show", "--run", "x"), "--run x"),
    (("show", "--workers", "2.5"), "--workers 2.5"),
    (("report", "--race", "abc"), "--race abc"),
    (("report", "--queries", "abc"), "--queries abc"),
    (("report", "--test-queries", "-1"), "--test-queries -1"),
    (("report", "--workers", "many"), "--workers many"),
    (("leaderboard", "--race", "abc"), "--race abc"),
    (("submit", "--run", "abc"), "--run abc"),
    (("submit", "--best", "--timeout", "soon"), "--timeout soon"),
    (("submit", "--best", "--retries", "abc"), "--retries abc"),
    (("serve-scorer", "--answers", "a.json", "--port", "abc"), "--port abc"),
    (("serve-scorer", "--answers", "a.json", "--port", "70000"), "--port 70000"),
]


@pytest.mark.parametrize("arguments, said", BAD_NUMBERS, ids=[" ".join(a[0][-2:]) for a in BAD_NUMBERS])
def test_a_bad_number_is_one_line_and_exit_1(forks, tmp_path, arguments, said):
    result = run(forks, arguments, tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.code == 1, output
    assert output.startswith("error: ") and said in output and "\n" not in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("arguments, said", [(("race",), "invoke race needs --data"),
                                             (("score", "x.json"), "invoke score needs --answers"),
                                             (("serve-scorer",), "invoke serve-scorer needs --answers")])
def test_a_missing_required_option_is_one_line(forks, tmp_path, arguments, said):
    result = run(forks, arguments, tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.code == 1 and said in output and "\n" not in output and "Traceback" not in output, output
