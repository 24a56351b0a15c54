"""Every run a race records can be shown and reported: its rankings are kept with its row
(toolkit.records.rankings), ensembles and trained runs included, and read back as the race made them;
`invoke demo` then `invoke show` / `show --worst` / `invoke report` draw the best run whatever it is."""
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from strategies import create_strategy
from tests.conftest import PROJECT
from tests.racing import race as run_race
from tests.test_report import _check_report, _parse
from toolkit.data.dataset import find_competition
from toolkit.pictures.grid import GridLayout
from toolkit.pictures.replay import replay_run
from toolkit.pictures.report import write_report
from toolkit.records.store import Leaderboard
from toolkit.retrieval.metrics import score_rankings
from toolkit.submit.submission import build_submission, load_submission

TINY_CNN = {"pretrained": False, "image_size": 64}


def refuse(name, **options):
    raise AssertionError(f"{name} was created again: its kept rankings should have been read")


@pytest.fixture(scope="module")
def raced(tmp_path_factory, synthetic_competition):
    """Two zero-shot runs, a trained one (adapter over cnn-zs) and their ensemble, recorded."""
    folder = tmp_path_factory.mktemp("kept")
    specs = [("cnn-zs", TINY_CNN), ("cnn-zs", {**TINY_CNN, "seed": 1}),
             ("adapter", {"base": "cnn-zs[pretrained=false,image_size=64]", "steps": 20, "evaluate_every": 10})]
    result = run_race(find_competition(synthetic_competition), specs, submissions_dir=folder / "subs",
                      cache_dir=folder / "cache", num_workers=0, show_progress=False, held_out_fraction=0.5,
                      gallery_pattern="*_s.*", leaderboard=folder / "lb.db")
    assert {run.strategy for run in result.runs if run.status == "finished"} == {"cnn-zs", "adapter", "ensemble"}, \
        [(run.label, run.status, run.reason) for run in result.runs]
    return folder, result


def test_every_finished_run_is_read_back_as_the_race_ranked_it(raced):
    folder, result = raced
    with Leaderboard(folder / "lb.db") as board:
        for run in (run for run in result.runs if run.status == "finished"):
            rankings = replay_run(board, run.run_id, refuse, splits=("validation", "test"))
            test, validation = rankings["test"], rankings["validation"]
            assert test.title.startswith(f"run {run.run_id}: {run.label}")
            assert build_submission(test.query_paths, test.gallery_paths, test.indices) == \
                load_submission(run.submission), run.label
            assert np.all(np.abs(test.similarities) <= 1.0001)
            labels = np.asarray(validation.gallery_labels, dtype=object)
            rescored = score_rankings(labels[validation.indices].tolist(), validation.query_labels,
                                      validation.gallery_labels)
            # an ensemble's kept ranking is the one its submission's choice gives (weights and recipe
            # chosen on all folds); its validation score is cross-fitted, so lower or equal in general
            assert rescored.score == pytest.approx(run.details.get("in_sample_validation", run.validation.score)), \
                run.label
            assert len(validation.query_paths) == run.validation.queries
            assert all(path.is_file() for path in validation.query_paths + test.gallery_paths)


def test_a_row_without_kept_rankings_is_created_again_the_same(raced, tmp_path):
    """An older file has no rankings: a zero-shot run is created again, and gives what was kept."""
    folder, result = raced
    shutil.copy(folder / "lb.db", tmp_path / "old.db")
    run = next(run for run in result.runs if run.strategy == "cnn-zs")
    with Leaderboard(folder / "lb.db") as board:
        kept = replay_run(board, run.run_id, refuse, splits=("validation", "test"))
    with sqlite3.connect(tmp_path / "old.db") as connection:
        connection.execute("DELETE FROM run_rankings")
    with Leaderboard(tmp_path / "old.db") as board:
        again = replay_run(board, run.run_id, create_strategy, splits=("validation", "test"),
                           cache_dir=folder / "cache", num_workers=0)
    for split in ("validation", "test"):
        assert again[split].query_paths == kept[split].query_paths
        np.testing.assert_array_equal(again[split].indices, kept[split].indices)
        np.testing.assert_allclose(again[split].similarities, kept[split].similarities, atol=1e-5)
    np.testing.assert_array_equal(again["validation"].first_hit, kept["validation"].first_hit)


def _mark_best(board_path, run_id):
    with sqlite3.connect(board_path) as connection:
        connection.execute("UPDATE run SET chosen = (id = ?)", (run_id,))


@pytest.mark.parametrize("strategy", ["ensemble", "adapter"])
def test_the_report_shows_the_best_run_alone_under_its_heading(raced, tmp_path, strategy):
    folder, result = raced
    shutil.copy(folder / "lb.db", tmp_path / "lb.db")
    best = next(run for run in result.runs if run.strategy == strategy)
    _mark_best(tmp_path / "lb.db", best.run_id)
    with Leaderboard(tmp_path / "lb.db") as board:
        path = write_report(board, result.race_id, make_strategy=refuse, out=tmp_path / "report.html", queries=3,
                            test_queries=2)
    text = _check_report(path, [run.label for run in result.runs], grid_rows=[3, 2])
    _, tags = _parse(path)
    captions = [attributes["alt"] for tag, attributes in tags if tag == "img"]
    assert len(captions) == 2 and all(caption.startswith(f"run {best.run_id}: {best.label}") for caption in captions)
    assert f"What the best run returns: run {best.run_id}, {best.label}" in text
    assert "cannot" not in text.split("What the best run returns")[1]


def _invoke(*arguments, cwd, env):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_demo_then_show_and_report_draw_the_best_run_whatever_it_is(tmp_path):
    (tmp_path / "retrieval-race.toml").write_text("")        # the project folder is here
    env = {**os.environ, "COLUMNS": "200", "RETRIEVAL_RACE_LEADERBOARD": str(tmp_path / "lb.db"),
           "RETRIEVAL_RACE_CACHE": str(tmp_path / "cache")}
    demo = _invoke("demo", "--data", str(tmp_path / "demo"), "--strategies",
                   "cnn-zs[pretrained=false,image_size=64],cnn-zs[pretrained=false,image_size=64,seed=1]",
                   cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    with Leaderboard(tmp_path / "lb.db") as board:
        runs = [run for run in board.runs() if run.status == "finished"]
    assert "ensemble" in {run.strategy for run in runs}
    layout = GridLayout()
    for run in sorted(runs, key=lambda run: run.strategy != "ensemble"):   # the ensemble first
        _mark_best(tmp_path / "lb.db", run.id)
        for name, extra in (("test.png", ()), ("worst.png", ("--worst",))):
            out = tmp_path / f"{run.id}-{name}"
            shown = _invoke("show", "--queries", "3", "--out", str(out), *extra, cwd=tmp_path, env=env)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert f"run {run.id}: {run.name}" in shown.stdout and "Traceback" not in shown.stderr
            assert Image.open(out).size == layout.size(3)
        reported = _invoke("report", "--out", str(tmp_path / f"{run.id}.html"), "--queries", "3", cwd=tmp_path,
                           env=env)
        assert reported.returncode == 0, reported.stdout + reported.stderr
        text = _check_report(tmp_path / f"{run.id}.html", [run.name], grid_rows=[3, 4])
        headings = re.findall(r"What the best run returns: run (\d+)", text)
        assert headings == [str(run.id)], headings
