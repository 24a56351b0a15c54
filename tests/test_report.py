"""Pictures of a race: retrieval grids (geometry, frame colours, unreadable images) and the HTML
report (parses, balanced, self-contained, every strategy of the race), in-process and via invoke."""
import base64
import html.parser
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from strategies import create_strategy
from tests.conftest import PROJECT
from tests.racing import race as run_race
from toolkit.data.dataset import find_competition
from toolkit.pictures.grid import HIT, MISS, QUERY, UNKNOWN, GridLayout
from toolkit.pictures.replay import ReplayError, replay_run, submission_rankings
from toolkit.pictures.report import REPORT_LAYOUT, chosen_queries, rankings_grid, write_report
from toolkit.records.store import Leaderboard
from toolkit.retrieval.metrics import score_rankings
from toolkit.submit.submission import build_submission, load_submission

LAYOUT = GridLayout()


@pytest.fixture(scope="module")
def race(tmp_path_factory, synthetic_competition, tiny_clip_model):
    """A recorded race on the generated competition: two tiny models and one that fails."""
    folder = tmp_path_factory.mktemp("report-race")
    specs = [("cnn-zs", {"pretrained": False, "image_size": 64}), ("clip-zs", {"model": tiny_clip_model, "pretrained": None}),
             ("clip-zs", {"model": "ViT-B-32", "pretrained": "no-such-tag"})]
    result = run_race(find_competition(synthetic_competition), specs, submissions_dir=folder / "subs",
                      cache_dir=folder / "cache" / "embeddings", num_workers=0, show_progress=False,
                      held_out_fraction=0.5, gallery_pattern="*_s.*", leaderboard=folder / "lb.db")
    # (an ensemble of the two finished ones may follow, as a run of its own)
    assert [_run(result, label).status for label in ("cnn-zs", "clip-zs[model=RR", "clip-zs[model=ViT")] == \
        ["finished", "finished", "failed"]
    with Leaderboard(folder / "lb.db") as board:
        attempt = board.start_submission(_run(result, "cnn-zs").run_id, "http://scorer", "team")
        board.finish_submission(attempt.id, "scored", 200, server_score=612.5)
    return folder, result


def _run(result, label_start):
    return next(run for run in result.runs if run.label.startswith(label_start))


def _replay(folder, run, splits=("validation", "test")):
    with Leaderboard(folder / "lb.db") as board:
        return replay_run(board, run.run_id, create_strategy, splits=splits, cache_dir=folder / "cache" / "embeddings",
                          num_workers=0)


def _check_grid(image, rankings, rows):
    """Size from the layout; every frame the colour its result deserves; blank cells blank."""
    assert image.size == LAYOUT.size(len(rows))
    for row, query in enumerate(rows):
        x, y = LAYOUT.cell_origin(row, 0)
        assert image.getpixel((x + 1, y + LAYOUT.cell_width // 2)) == QUERY
        for position in range(10):
            x, y = LAYOUT.cell_origin(row, position + 1)
            pixel = image.getpixel((x + 1, y + LAYOUT.frame + LAYOUT.thumbnail // 2))
            if position >= rankings.indices.shape[1]:
                assert pixel == (255, 255, 255)
                continue
            hit = rankings.is_hit(query, position)
            assert pixel == (UNKNOWN if hit is None else HIT if hit else MISS), (row, position)


def test_grid_layout_is_eleven_columns_of_equal_cells():
    assert (LAYOUT.cell_width, LAYOUT.cell_height) == (138, 170)
    width, height = LAYOUT.size(3)
    assert width == 2 * LAYOUT.margin + 11 * LAYOUT.cell_width + 10 * LAYOUT.gap + LAYOUT.query_gap
    assert height == LAYOUT.header + 3 * LAYOUT.cell_height + 2 * LAYOUT.gap + LAYOUT.margin
    assert LAYOUT.cell_origin(0, 10)[0] + LAYOUT.cell_width + LAYOUT.margin == width


def test_the_replayed_run_is_the_race_s_ranking(race):
    folder, result = race
    run = _run(result, "cnn-zs")
    rankings = _replay(folder, run)
    test, validation = rankings["test"], rankings["validation"]
    assert build_submission(test.query_paths, test.gallery_paths, test.indices) == load_submission(run.submission)
    labels = np.asarray(validation.gallery_labels, dtype=object)
    rescored = score_rankings(labels[validation.indices].tolist(), validation.query_labels, validation.gallery_labels)
    assert rescored.score == pytest.approx(run.validation.score)
    assert np.all(np.abs(test.similarities) <= 1.0001)


def test_worst_validation_queries_framed_green_and_red(race, tmp_path):
    folder, result = race
    rankings = _replay(folder, _run(result, "clip-zs[model=RR"), splits=("validation",))["validation"]
    rows = chosen_queries(rankings, 6, worst=True)
    badness = [rank if rank else 10**9 for rank in rankings.first_hit[rows]]
    assert badness == sorted(badness, reverse=True)
    assert max(badness) == max(rank if rank else 10**9 for rank in rankings.first_hit)
    assert {rankings.is_hit(query, position) for query in rows for position in range(10)} == {True, False}
    image = rankings_grid(rankings, 6, worst=True)
    image.save(tmp_path / "grid.png")
    _check_grid(Image.open(tmp_path / "grid.png").convert("RGB"), rankings, rows)


def test_a_bare_submission_shows_ranks_and_marks_unreadable_and_missing_images(race, tmp_path, synthetic_competition):
    folder, result = race
    data = tmp_path / "competition"
    shutil.copytree(synthetic_competition, data)
    submission = load_submission(_run(result, "cnn-zs").submission)
    query = sorted(submission)[0]
    broken = submission[query][0]
    (data / "test" / "gallery" / broken).write_bytes(b"not an image")
    submission[query][1] = "no-such-file.jpg"
    (tmp_path / "hand.json").write_text(json.dumps(submission))

    rankings = submission_rankings(tmp_path / "hand.json", data)
    assert rankings.similarities is None and not rankings.labelled
    image = rankings_grid(rankings, 3)
    _check_grid(image, rankings, chosen_queries(rankings, 3))
    for column in (1, 2):    # the unreadable and the missing file: grey with a red band across the middle
        left, top, right, bottom = LAYOUT.thumbnail_box(0, column)
        assert image.getpixel((left + 3, top + 3)) == (128, 128, 128)
        assert image.getpixel((left + 3, (top + bottom) // 2)) == MISS


def _parse(path: Path):
    """(text, [(tag, attrs)]) of an HTML file; asserts its tags are balanced."""
    class Checker(html.parser.HTMLParser):
        void = {"meta", "br", "img", "hr", "input", "link"}

        def __init__(self):
            super().__init__()
            self.open, self.tags, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))
            if tag not in self.void:
                self.open.append(tag)

        def handle_startendtag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_endtag(self, tag):
            assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
            self.open.pop()

        def handle_data(self, data):
            self.text.append(data)

    checker = Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert checker.open == [], checker.open
    return " ".join(checker.text), checker.tags


def _check_report(path: Path, names, grid_rows=None):
    text, tags = _parse(path)
    for name in names:
        assert name in text
    assert not [tag for tag, _ in tags if tag in ("script", "link", "iframe")]
    images = []
    for tag, attributes in tags:
        for key in ("src", "href"):
            if key in attributes:
                reference = attributes[key]
                if reference.startswith("data:"):
                    images.append(Image.open(io.BytesIO(base64.b64decode(reference.split(",", 1)[1]))))
                else:
                    assert "://" not in reference and (path.parent / reference).is_file(), reference
    assert sum(tag == "svg" for tag, _ in tags) >= 2
    if grid_rows is not None:
        assert [image.size for image in images] == [REPORT_LAYOUT.size(rows) for rows in grid_rows]
    return text


def test_report_has_every_strategy_charts_and_the_best_run_s_grids(race, tmp_path):
    folder, result = race
    with Leaderboard(folder / "lb.db") as board:
        path = write_report(board, result.race_id, make_strategy=create_strategy, out=tmp_path / "report.html",
                            queries=5, test_queries=3,
                            cache_dir=folder / "cache" / "embeddings", num_workers=0)
    text = _check_report(path, [run.label for run in result.runs], grid_rows=[5, 3])
    assert "612.5" in text and "failed" in text and "no-such-tag" in text


def test_report_without_the_data_still_renders_with_a_note(tmp_path):
    with Leaderboard(tmp_path / "lb.db") as board:
        race = board.start_race("/no/such/competition", budget_seconds=600, options={"seed": 1})
        board.add_run(race_id=race.id, name="cnn-zs", strategy="cnn-zs", options={}, status="finished",
                      validation_score=420.0, submission_path=str(tmp_path / "gone.json"))
        board.add_run(race_id=race.id, name="face-zs", strategy="face-zs", options={}, status="skipped",
                      reason="estimated 900s, 10s left")
        path = write_report(board, make_strategy=create_strategy, out=tmp_path / "r" / "report.html")
    text = _check_report(path, ["cnn-zs", "face-zs", "estimated 900s"], grid_rows=[])
    assert "No retrieval grids" in text and "/no/such/competition" in text


def test_an_older_trained_row_shows_its_submission_file_and_no_validation(race, tmp_path):
    """A row recorded before races kept rankings, of a strategy that trains: it cannot be created again."""
    folder, result = race
    run = _run(result, "cnn-zs")
    def trained(name, **options):       # the run's strategy, as if its fit() trained a model
        kind = type(create_strategy(name, **options))
        return type(f"Trained{kind.__name__}", (kind,), {"trains": True})(**options)

    shutil.copy(folder / "lb.db", tmp_path / "lb.db")
    with sqlite3.connect(tmp_path / "lb.db") as connection:
        connection.execute("DELETE FROM run_rankings")
        connection.execute("UPDATE run SET chosen = (id = ?)", (run.run_id,))
    with Leaderboard(tmp_path / "lb.db") as board:
        with pytest.raises(ReplayError, match="trained its model"):
            replay_run(board, run.run_id, trained, splits=("validation", "test"))
        test = replay_run(board, run.run_id, trained, splits=("test",))["test"]
        path = write_report(board, result.race_id, make_strategy=trained, out=tmp_path / "report.html", queries=3,
                            test_queries=2)
    assert test.similarities is None
    assert build_submission(test.query_paths, test.gallery_paths, test.indices) == load_submission(run.submission)
    assert "No validation grid" in _check_report(path, [run.label], grid_rows=[2])


def invoke(*arguments, env):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300, env=env)


def test_show_and_report_from_the_command_line(tmp_path, synthetic_competition, race):
    folder, _ = race
    cache = folder / "cache"       # RETRIEVAL_RACE_CACHE/embeddings: the race above embedded these already
    result = run_race(find_competition(synthetic_competition), [("cnn-zs", {"pretrained": False, "image_size": 64})],
                      submissions_dir=tmp_path / "subs", cache_dir=cache / "embeddings", num_workers=0,
                      show_progress=False, held_out_fraction=0.5, gallery_pattern="*_s.*",
                      leaderboard=tmp_path / "lb.db")
    env = {**os.environ, "COLUMNS": "200", "RETRIEVAL_RACE_LEADERBOARD": str(tmp_path / "lb.db"),
           "RETRIEVAL_RACE_CACHE": str(cache)}
    shown = invoke("show", "--worst", "--queries", "4", "--out", str(tmp_path / "worst.png"), env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert Image.open(tmp_path / "worst.png").size == LAYOUT.size(4)
    [run] = [run for run in result.runs if run.strategy == "cnn-zs"]
    by_file = invoke("show", "--submission", str(run.submission),
                  "--queries", "2", "--out", str(tmp_path / "test.png"), env=env)
    assert by_file.returncode == 0, by_file.stdout + by_file.stderr
    assert Image.open(tmp_path / "test.png").size == LAYOUT.size(2)
    reported = invoke("report", "--out", str(tmp_path / "out" / "race.html"), "--queries", "3", env=env)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    _check_report(tmp_path / "out" / "race.html", [run.label], grid_rows=[3, 4])
    refused = invoke("show", "--run", "99", env=env)
    assert refused.returncode == 1 and "no run 99" in refused.stdout


def test_report_on_the_real_mini_benchmark_with_face_zs(tmp_path, mini_benchmark):
    pytest.importorskip("dlib")
    result = run_race(find_competition(mini_benchmark), [("face-zs", {})], submissions_dir=tmp_path / "subs",
                      cache_dir=tmp_path / "cache", show_progress=False, held_out_fraction=0.5,
                      gallery_pattern="*_s.*", leaderboard=tmp_path / "lb.db")
    [run] = [run for run in result.runs if run.strategy == "face-zs"]
    assert run.status == "finished", run.reason
    with Leaderboard(tmp_path / "lb.db") as board:
        rankings = replay_run(board, run.run_id, create_strategy, cache_dir=tmp_path / "cache")["validation"]
        path = write_report(board, make_strategy=create_strategy, out=tmp_path / "report.html",
                            cache_dir=tmp_path / "cache")
    assert len(rankings.query_paths) == run.validation.queries
    rows = chosen_queries(rankings, 8, worst=True)
    _check_grid(rankings_grid(rankings, 8, worst=True), rankings, rows)
    _check_report(path, ["face-zs"], grid_rows=[8, 4])

