"""Pictures of a race: retrieval grids of a run, and one HTML page a team can read at a glance.

    rankings_grid(rankings, count, worst)   a PIL image: one row per query, the query then its
                                            top-10 (rank, cosine similarity; on validation hits
                                            framed green, misses red)
    write_report(board, race_id)            one self-contained HTML file: the race's leaderboard,
                                            validation score and time per strategy (inline SVG),
                                            validation against server score, and the grids of
                                            the best run (its worst validation queries, a few
                                            test queries); images are data: URIs, nothing is
                                            fetched from the network

The rankings come from toolkit.pictures.replay (a run re-created from the leaderboard, or a submission
file read back); the drawing from toolkit.pictures.grid.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from toolkit.pictures.charts import score_bars_svg, time_bars_svg, validation_server_svg
from toolkit.pictures.grid import HIT, MISS, QUERY, UNKNOWN, Cell, GridLayout, GridRow, render_grid
from toolkit.pictures.replay import Rankings, ReplayError, replay_run
from toolkit.race.selection import best_run
from toolkit.records.rankings import SPLITS
from toolkit.records.store import Leaderboard, Race, Run, RunSummary
from toolkit.views.leaderboard import row_kind, run_cells, run_detail, server_text
from toolkit.views.text import budget_text, local_time

REPORTS = Path("reports")
REPORT_LAYOUT = GridLayout(thumbnail=104)     # 11 columns fit a 1400-pixel-wide page


class ReportError(RuntimeError):
    """A race that is not in the leaderboard, or a report that cannot be written."""


# --- grids ---------------------------------------------------------------------------------------


def chosen_queries(rankings: Rankings, count: int, worst: bool = False) -> list[int]:
    """Which queries get a row. worst: the first hit ranked lowest first (no hit at all before
    any); among equal ranks, the smallest cosine margin between the person and the closest
    stranger first; needs labels. Otherwise `count` queries spread evenly."""
    total = len(rankings.query_paths)
    count = max(0, min(count, total))
    if worst:
        if rankings.first_hit is None:
            raise ValueError("the worst queries need labels: use the validation split")
        badness = np.where(rankings.first_hit == 0, np.iinfo(np.int64).max, rankings.first_hit)
        margin = rankings.margin if rankings.margin is not None else np.zeros(total)
        return sorted(range(total), key=lambda query: (-badness[query], margin[query], query))[:count]
    if count == 0:
        return []
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


def grid_rows(rankings: Rankings, queries: Sequence[int]) -> list[GridRow]:
    rows = []
    for query in queries:
        if rankings.labelled:
            first = int(rankings.first_hit[query]) if rankings.first_hit is not None else 0
            query_cell = Cell(rankings.query_paths[query], (rankings.query_labels[query],
                              f"first hit #{first}" if first else "no hit in gallery"), QUERY)
        else:
            query_cell = Cell(rankings.query_paths[query], (rankings.query_paths[query].name, "query"), QUERY)
        results = []
        for position, row in enumerate(rankings.indices[query]):
            if row < 0:
                break
            rank = f"#{position + 1}"
            if rankings.similarities is not None:
                rank += f"  {rankings.similarities[query, position]:.3f}"
            hit = rankings.is_hit(query, position)
            name = rankings.gallery_labels[row] if rankings.labelled else rankings.gallery_paths[row].name
            results.append(Cell(rankings.gallery_paths[row], (rank, name),
                                UNKNOWN if hit is None else HIT if hit else MISS))
        rows.append(GridRow(query_cell, tuple(results)))
    return rows


def grid_title(rankings: Rankings, shown: int, worst: bool) -> tuple[str, str]:
    """(title, legend) of a grid."""
    total = len(rankings.query_paths)
    which = f"the {shown} worst of {total} queries" if worst else f"{shown} of {total} queries"
    title = f"{rankings.title} - {rankings.split} split, {which}"
    scores = "#rank and cosine similarity" if rankings.similarities is not None else "#rank (no similarities: a bare file)"
    if rankings.labelled:
        legend = (f"blue: the query (its identity, and the rank of its first hit); green: same identity; "
                  f"red: another identity; {scores} above each result's identity")
    else:
        legend = f"blue: the query; grey: results (test labels unknown); {scores} above each file name"
    return title, legend


def rankings_grid(rankings: Rankings, count: int = 8, worst: bool = False,
                  layout: GridLayout = GridLayout()) -> Image.Image:
    queries = chosen_queries(rankings, count, worst)
    title, legend = grid_title(rankings, len(queries), worst)
    return render_grid(grid_rows(rankings, queries), title, legend, layout)


def grid_file_name(rankings: Rankings, count: int, worst: bool) -> str:
    shown = min(count, len(rankings.query_paths))
    what = rankings.title.split(" (")[0]          # "run 3: face-zs", without the post-processing
    return f"{slug(what)}-{rankings.split}{'-worst' if worst else ''}-{shown}.png"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-.")[:80] or "grid"


# --- the HTML report -----------------------------------------------------------------------------


@dataclass
class Figure:
    caption: str
    image: Image.Image


def write_report(board: Leaderboard, race_id: int | None = None, *, make_strategy: Callable[..., Any],
                 out: str | Path | None = None, queries: int = 8, test_queries: int = 4,
                 cache_dir: Path | None = None, num_workers: int | None = None, show_progress: bool = False,
                 reports: Path = REPORTS) -> Path:
    """Write the race's report (default: the latest race, to `reports`/race-<id>.html); return its path.
    make_strategy(name, **options) creates a strategy again (strategies.create_strategy), to re-create
    the best run's rankings (toolkit.pictures.replay)."""
    race = board.race(race_id) if race_id is not None else board.latest_race()
    if race is None:
        raise ReportError(f"no race {race_id} in {board.path}" if race_id is not None
                          else f"no race in {board.path} yet; invoke race records one")
    summaries = board.summaries(race.id)
    best = best_run(board.runs(race.id))      # the run `invoke show` draws: its grids, and only its
    rankings, notes = best_rankings(board, best, make_strategy=make_strategy, cache_dir=cache_dir,
                                    num_workers=num_workers, show_progress=show_progress)
    figures = []
    for split, count, worst in (("validation", queries, True), ("test", test_queries, False)):
        if count > 0 and split in rankings:
            title, _ = grid_title(rankings[split], min(count, len(rankings[split].query_paths)), worst)
            figures.append(Figure(title, rankings_grid(rankings[split], count, worst, REPORT_LAYOUT)))
    path = Path(out) if out else Path(reports) / f"race-{race.id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(race, summaries, figures, " ".join(notes), best), encoding="utf-8")
    return path


def best_rankings(board: Leaderboard, best: Run | None, **replay_options) -> tuple[dict[str, Rankings], list[str]]:
    """The validation and test rankings of the race's best run (replay_run with replay_options),
    and notes on what of it cannot be shown. Only that run's: a split it cannot give is left out
    with the reason, never filled in from another run."""
    if best is None:
        return {}, ["No run of this race finished, so there are no retrieval grids."]
    try:
        return replay_run(board, best, splits=SPLITS, **replay_options), []
    except ReplayError as error:
        notes = [f"{error}."]
    try:
        rankings = replay_run(board, best, splits=("test",), **replay_options)
    except ReplayError as error:
        rankings = {}
        if f"{error}." not in notes:
            notes.append(f"{error}.")
    notes.insert(0, "No validation grid." if rankings else "No retrieval grids.")
    return rankings, notes


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1e1e1e;
       margin: 24px auto; max-width: 1360px; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
.meta { color: #555; font-size: 13px; line-height: 1.5; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 4px 7px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
td.name { text-align: left; white-space: normal; overflow-wrap: anywhere; min-width: 220px; max-width: 330px; }
td.recipe { text-align: left; white-space: normal; max-width: 230px; }
td.reason { text-align: left; white-space: normal; overflow-wrap: anywhere; min-width: 160px; color: #555; }
tr.best td { background: #e8f6ea; font-weight: 600; } tr.failed td { color: #b42318; }
.charts { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
figure { margin: 0 0 18px; } figcaption { font-size: 13px; color: #555; margin: 4px 0 8px; }
img.grid { max-width: 100%; border: 1px solid #ddd; }
.note { color: #555; font-style: italic; }
"""


def report_html(race: Race, summaries: Sequence[RunSummary], figures: Sequence[Figure], note: str = "",
                best: Run | None = None) -> str:
    """The page; `figures` show `best`, the run named under "What the best run returns"."""
    runs = [summary.run for summary in summaries]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>race {race.id}: retrieval-race report</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>Race {race.id}{': ' + html.escape(Path(race.data_path).name) if race.data_path else ''}</h1>",
        f'<div class="meta">{_race_meta(race)}</div>',
        "<h2>Leaderboard</h2>",
        _leaderboard_table(summaries, best),
        "<h2>Score and time per strategy</h2>",
        '<div class="charts">',
        _figure(score_bars_svg(runs, best.id if best else None), "Validation score per strategy (0-1000); the thin dark mark "
                "is the plain score (no flip, no re-ranking)"),
        _figure(time_bars_svg(runs), "Time per strategy: fit and embedding (validation and test), seconds"),
        "</div>",
        "<h2>Validation against the server</h2>",
        _server_section(summaries),
        "<h2>What the best run returns" + (f": run {best.id}, {html.escape(best.name)}" if best else "") + "</h2>",
    ]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    for figure in figures:
        parts.append(f'<figure><img class="grid" alt="{html.escape(figure.caption)}" src="{_data_uri(figure.image)}">'
                     "</figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _race_meta(race: Race) -> str:
    options = json.loads(race.options or "{}")
    items = [f"started {local_time(race.started_at)}",
             f"took {race.seconds:.0f} s" if race.seconds is not None else "not finished",
             budget_text(race.budget_seconds) or "no budget",
             f"data {race.data_path or '?'}" + (f" ({race.data_fingerprint})" if race.data_fingerprint else ""),
             _race_options(options),
             " / ".join(part for part in (race.host, race.cpu, race.gpu or "no GPU") if part),
             f"torch {race.torch_version or '?'}, open_clip {race.open_clip_version or '?'}",
             f"commit {race.git_commit[:10]}" if race.git_commit else "commit unknown"]
    return "<br>".join(html.escape(item) for item in items)


def _race_options(options: dict) -> str:
    """'validation: seed 0, 20% of identities held out, gallery pattern *_s.*; flip auto; re-ranking tried'."""
    split = [f"seed {options.get('seed', 0)}",
             f"{options.get('held_out_fraction', 0.2):.0%} of identities held out"]
    if options.get("gallery_pattern"):
        split.append(f"gallery pattern {options['gallery_pattern']}")
    flip = {None: "auto", True: "on", False: "off"}.get(options.get("flip_tta"), str(options.get("flip_tta")))
    rerank = "re-ranking tried" if options.get("post_process", True) else "no re-ranking"
    return f"validation: {', '.join(split)}; flip {flip}; {rerank}"


def _leaderboard_table(summaries: Sequence[RunSummary], best) -> str:
    if not summaries:
        return '<p class="note">No runs recorded for this race.</p>'
    head = ("run", "strategy", "status", "val score", "plain", "post-processing", "Top1", "Top5", "Top10",
            "mAP@10", "server", "fit s", "embed s", "submission / reason")
    classes = {"strategy": "name", "status": "text", "post-processing": "recipe", "submission / reason": "reason"}
    rows = ["<table>", "<thead><tr>" + "".join(
        f'<th class="text">{name}</th>' if name in classes else f"<th>{name}</th>" for name in head)
        + "</tr></thead>", "<tbody>"]
    for summary in summaries:
        cells = run_cells(summary.run)
        cells.update({"server": server_text(summary), "submission / reason": run_detail(summary.run, 160)})
        rows.append(f'<tr class="{row_kind(summary.run, best)}">' + "".join(
            f'<td class="{classes.get(column, "")}">{html.escape(cells[column])}</td>' for column in head) + "</tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _server_section(summaries: Sequence[RunSummary]) -> str:
    known = [summary for summary in summaries
             if summary.server_score is not None and summary.run.validation_score is not None]
    if not known:
        return ('<p class="note">No run of this race has a server score yet '
                "(invoke submit --best sends the best one).</p>")
    rows = ["<table>", '<thead><tr><th>run</th><th class="text">strategy</th><th>validation</th><th>server</th>'
            "<th>server - validation</th></tr></thead>", "<tbody>"]
    for summary in known:
        run = summary.run
        rows.append(f'<tr><td>{run.id}</td><td class="name">{html.escape(run.name)}</td>'
                    f"<td>{run.validation_score:.1f}</td><td>{summary.server_score:.1f}</td>"
                    f"<td>{summary.server_score - run.validation_score:+.1f}</td></tr>")
    rows += ["</tbody>", "</table>"]
    points = [(f"run {s.run.id} {s.run.name}", s.run.validation_score, s.server_score) for s in known]
    return ('<div class="charts">' + "\n".join(rows)
            + _figure(validation_server_svg(points), "each dot a run; on the dashed line validation predicted the server")
            + "</div>")


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
