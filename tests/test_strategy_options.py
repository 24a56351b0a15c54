"""Strategy options checked by one rule (strategies.base.check_options) for every strategy: an
unknown option is named with the known ones, a near-miss value gets "did you mean", and a race
refuses a bad spec with one line before anything runs."""
import os
import sqlite3
import subprocess
import sys

import pytest

from strategies import create_strategy, strategy_class, strategy_names
from tests.conftest import PROJECT


def _refusal(name, **options) -> str:
    with pytest.raises(ValueError) as caught:
        create_strategy(name, **options)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_names_an_unknown_option_and_its_known_ones(name):
    message = _refusal(name, no_such_option=1)
    assert "no_such_option" in message
    known = strategy_class(name).DEFAULTS
    assert known and all(option in message for option in known), message


@pytest.mark.parametrize("name, options, suggestion", [
    ("clip-zs", {"modle": "ViT-B-32"}, "did you mean model"),
    ("cnn-zs", {"poling": "gem"}, "did you mean pooling"),
    ("triplet", {"step": 10}, "did you mean steps"),
    ("adapter", {"los": "triplet"}, "did you mean loss"),
    ("face-zs", {"upsampel": 1}, "did you mean upsample"),
])
def test_a_misspelt_option_gets_the_nearest_name(name, options, suggestion):
    assert suggestion in _refusal(name, **options)


@pytest.mark.parametrize("name, options, suggestion", [
    ("clip-zs", {"model": "ViT-B/32"}, "did you mean ViT-B-32"),       # the OpenAI spelling
    ("clip-zs", {"model": "ViT-B-23"}, "did you mean ViT-B-32"),
    ("clip-ft", {"model": "ViT-L/14"}, "did you mean ViT-L-14"),
    ("clip-ft", {"objective": "fylp"}, "did you mean flyp"),
    ("cnn-zs", {"pooling": "Gem"}, "did you mean gem"),
    ("arcface", {"unfreeze": "lst"}, "did you mean last"),
    ("adapter", {"loss": "arcfce"}, "did you mean arcface"),
])
def test_a_near_miss_value_gets_did_you_mean(name, options, suggestion):
    message = _refusal(name, **options)
    assert suggestion in message and str(next(iter(options.values()))) in message


def test_an_adapter_s_base_options_are_checked_when_it_is_created():
    assert "did you mean model" in _refusal("adapter", base="clip-zs[modle=ViT-B-32]")


def test_values_it_cannot_list_are_left_to_the_strategy(tiny_clip_model):
    create_strategy("clip-zs", model=tiny_clip_model, pretrained=None)       # a registered config
    create_strategy("clip-zs", model="hf-hub:timm/some-model")               # open_clip's hub names
    create_strategy("cnn-zs", pooling="gem", gem_p=4.0)


def _invoke(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("spec, expected", [
    ("clip-zs[modle=ViT-B-32]", "did you mean model"),
    ("clip-zs[model=ViT-B/32]", "did you mean ViT-B-32"),
])
def test_the_race_refuses_a_bad_spec_before_any_run_starts(tmp_path, synthetic_competition, spec, expected):
    board = tmp_path / "leaderboard.db"
    result = _invoke("race", "--data", str(synthetic_competition), "--strategies", f"cnn-zs[pretrained=false],{spec}",
                     "--submissions", str(tmp_path / "subs"), "--leaderboard", str(board), "--workers", "0",
                     cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stdout
    assert "Traceback" not in result.stdout + result.stderr and not result.stderr.strip()
    assert not (tmp_path / "subs").exists()
    if board.exists():
        assert sqlite3.connect(board).execute("select count(*) from race").fetchone() == (0,)
