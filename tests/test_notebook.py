"""The Python API as a notebook uses it: race on a generated competition, look at the rows, render
them as a cell would, read the leaderboard again; bad input is one ValueError line."""
from __future__ import annotations

import inspect
import json

import pytest

import retrieval_race
from toolkit.data.dataset import LayoutError
from toolkit.race.config import DEFAULT_STRATEGIES, RaceConfig

TINY = "cnn-zs[pretrained=false,image_size=64]"


@pytest.fixture(scope="module")
def raced(synthetic_competition, tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebook")
    view = retrieval_race.race(synthetic_competition, strategies=f"{TINY},{TINY.replace('64', '32')}", workers=0,
                               leaderboard=folder / "lb.db", submissions=folder / "subs", show_progress=False,
                               cache_dir=folder / "cache")
    return view, folder


def test_race_returns_its_rows_best_first_and_the_best_submission(raced, synthetic_competition):
    view, folder = raced
    rows = view.records
    assert len(rows) == 3                                     # two strategies and their ensemble
    assert all(row["status"] == "finished" and isinstance(row["run"], int) for row in rows)
    scores = [row["validation"] for row in rows]
    assert scores == sorted(scores, reverse=True) and all(isinstance(score, float) for score in scores)
    assert view.best_submission is not None and view.best_submission.parent == folder / "subs"
    best = json.loads(view.best_submission.read_text())
    assert len(best) == len(list((synthetic_competition / "test" / "query").iterdir()))
    assert {row["submission"] for row in rows} == {str(path) for path in (folder / "subs").glob("*.json")
                                                   if "best" not in path.name}


def test_a_cell_shows_the_rows_as_a_table(raced):
    view, _ = raced
    page = view._repr_html_()
    assert page.count("<tr>") == 1 + len(view.records) and "<th>validation</th>" in page
    for row in view.records:
        assert f"<td>{row['run']}</td>" in page and f"{row['validation']:.1f}" in page
    text = repr(view)
    assert all(row["strategy"] in text for row in view.records) and "best submission:" in text


def test_leaderboard_reads_the_same_rows_back(raced):
    view, folder = raced
    again = retrieval_race.leaderboard(leaderboard=folder / "lb.db")
    assert again.records == view.records and again.best_submission is not None
    assert retrieval_race.leaderboard(all=True, leaderboard=folder / "lb.db").records == view.records
    with pytest.raises(ValueError, match="no race 99 in"):
        retrieval_race.leaderboard(race=99, leaderboard=folder / "lb.db")


def test_rows_are_a_dataframe_when_pandas_is_there(raced):
    pandas = pytest.importorskip("pandas")
    view, folder = raced
    frame = retrieval_race.leaderboard(leaderboard=folder / "lb.db").rows
    assert isinstance(frame, pandas.DataFrame) and list(frame["run"]) == [row["run"] for row in view.records]


def test_the_api_takes_the_command_lines_defaults():
    parameters = inspect.signature(retrieval_race.race).parameters
    assert parameters["strategies"].default == DEFAULT_STRATEGIES
    assert (parameters["seed"].default, parameters["held_out"].default, parameters["rerank"].default) == \
        (RaceConfig.seed, RaceConfig.held_out_fraction, RaceConfig.post_process)


@pytest.mark.parametrize("keywords, said", [({"seed": "abc"}, "seed abc: give a whole number"),
                                            ({"held_out": 1.5}, "held_out 1.5: give a fraction"),
                                            ({"budget": "90"}, "budget 90: give a unit"),
                                            ({"flip": "maybe"}, "flip takes auto, on or off"),
                                            ({"gallery_pattern": "*_zz.*"}, "gallery_pattern \\*_zz.\\* matches none")])
def test_bad_input_is_one_value_error_before_anything_runs(synthetic_competition, tmp_path, keywords, said):
    with pytest.raises(ValueError, match=said) as raised:
        retrieval_race.race(synthetic_competition, strategies=TINY, leaderboard=tmp_path / "lb.db",
                            submissions=tmp_path / "subs", show_progress=False, **keywords)
    assert "\n" not in str(raised.value) and not (tmp_path / "subs").exists() and not (tmp_path / "lb.db").exists()
    if "gallery_pattern" in keywords:
        assert isinstance(raised.value, LayoutError)
