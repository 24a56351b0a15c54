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
from datetime import timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from toolkit.pictures.grid import HIT, MISS, QUERY, UNKNOWN, Cell, GridLayout, GridRow, render_grid
from toolkit.records.leaderboard import Leaderboard, Race, RunSummary, post_processing_text
from toolkit.pictures.replay import Rankings, ReplayError, replay_run

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


def write_report(board: Leaderboard, race_id: int | None = None, out: str | Path | None = None,
                 queries: int = 8, test_queries: int = 4, cache_dir: Path | None = None,
                 num_workers: int | None = None, show_progress: bool = False) -> Path:
    """Write the race's report (default: the latest race, to reports/race-<id>.html); return its path."""
    race = board.race(race_id) if race_id is not None else board.latest_race()
    if race is None:
        raise ReportError(f"no race {race_id} in {board.path}" if race_id is not None
                          else f"no race in {board.path} yet; invoke race records one")
    summaries = board.summaries(race.id)
    rankings, notes = best_rankings(board, race.id, cache_dir=cache_dir, num_workers=num_workers,
                                    show_progress=show_progress)
    figures = []
    for split, count, worst in (("validation", queries, True), ("test", test_queries, False)):
        if count > 0 and split in rankings:
            title, _ = grid_title(rankings[split], min(count, len(rankings[split].query_paths)), worst)
            figures.append(Figure(title, rankings_grid(rankings[split], count, worst, REPORT_LAYOUT)))
    path = Path(out) if out else REPORTS / f"race-{race.id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(race, summaries, figures, " ".join(notes)), encoding="utf-8")
    return path


def best_rankings(board: Leaderboard, race_id: int, tries: int = 3, **replay_options) -> tuple[dict[str, Rankings], list[str]]:
    """The validation and test rankings of the race's best run, and notes on what could not be
    shown. A run that cannot be re-created (an ensemble, a trained model) gives its test ranking
    from its submission file, and the validation grid comes from the next best run that can."""
    finished = sorted((run for run in board.runs(race_id) if run.status == "finished"
                       and run.validation_score is not None and run.submission_path),
                      key=lambda run: (-run.validation_score, -run.id))     # as Leaderboard.best_run
    if not finished:
        return {}, ["No run of this race finished, so there are no retrieval grids."]
    rankings: dict[str, Rankings] = {}
    notes = []
    for run in finished[:tries]:
        missing = [split for split in ("validation", "test") if split not in rankings]
        try:
            rankings.update(replay_run(board, run, splits=missing, **replay_options))
        except ReplayError as error:
            if f"{error}." not in notes:
                notes.append(f"{error}.")
            if "test" in missing:
                try:
                    rankings.update(replay_run(board, run, splits=("test",), **replay_options))
                except ReplayError:
                    pass
        if len(rankings) == 2:
            break
    if "validation" not in rankings:
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


def report_html(race: Race, summaries: Sequence[RunSummary], figures: Sequence[Figure], note: str = "") -> str:
    best_id = _best_id(summaries)
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
        _leaderboard_table(summaries, best_id),
        "<h2>Score and time per strategy</h2>",
        '<div class="charts">',
        _figure(score_bars_svg(summaries, best_id), "Validation score per strategy (0-1000); the thin dark mark "
                "is the plain score (no flip, no re-ranking)"),
        _figure(time_bars_svg(summaries), "Time per strategy: fit and embedding (validation and test), seconds"),
        "</div>",
        "<h2>Validation against the server</h2>",
        _server_section(summaries),
        "<h2>What the best run returns</h2>",
    ]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    for figure in figures:
        parts.append(f'<figure><img class="grid" alt="{html.escape(figure.caption)}" src="{_data_uri(figure.image)}">'
                     "</figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _best_id(summaries: Sequence[RunSummary]) -> int | None:
    finished = [s.run for s in summaries if s.run.status == "finished" and s.run.validation_score is not None]
    return max(finished, key=lambda run: (run.validation_score, run.id)).id if finished else None


def _race_meta(race: Race) -> str:
    started = race.started_at.replace(tzinfo=race.started_at.tzinfo or timezone.utc).astimezone()
    options = json.loads(race.options or "{}")
    items = [f"started {started:%Y-%m-%d %H:%M}",
             f"took {race.seconds:.0f} s" if race.seconds is not None else "not finished",
             f"budget {race.budget_seconds / 60:g} min" if race.budget_seconds else "no budget",
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


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _leaderboard_table(summaries: Sequence[RunSummary], best_id: int | None) -> str:
    if not summaries:
        return '<p class="note">No runs recorded for this race.</p>'
    head = ("run", "strategy", "status", "val score", "plain", "post-processing", "Top1", "Top5", "Top10",
            "mAP@10", "server", "fit s", "embed s", "submission / reason")
    classes = {"strategy": "name", "status": "text", "post-processing": "recipe", "submission / reason": "reason"}
    rows = ["<table>", "<thead><tr>" + "".join(
        f'<th class="text">{name}</th>' if name in classes else f"<th>{name}</th>" for name in head)
        + "</tr></thead>", "<tbody>"]
    for summary in summaries:
        run = summary.run
        detail = Path(run.submission_path).name if run.submission_path else _shorten(run.reason or "", 160)
        cells = [str(run.id), html.escape(run.name), html.escape(run.status), _number(run.validation_score, 1),
                 _number(getattr(run, "plain_score", None), 1), html.escape(post_processing_text(run)),
                 _number(run.validation_top1, 3), _number(run.validation_top5, 3), _number(run.validation_top10, 3),
                 _number(run.validation_map_at_10, 3), _server_text(summary), _number(run.fit_seconds, 1),
                 _number(run.embed_seconds, 1), html.escape(detail)]
        kind = "best" if run.id == best_id else "failed" if run.status in ("failed", "timed-out") else ""
        rows.append(f'<tr class="{kind}">' + "".join(
            f'<td class="{classes.get(column, "")}">{cell}</td>' for column, cell in zip(head, cells)) + "</tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def _server_text(summary: RunSummary) -> str:
    if summary.server_score is not None:
        return f"{summary.server_score:.1f}"
    last = summary.last_attempt
    return "-" if last is None else ("sending?" if last.state == "sending" else "failed")


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


# --- inline SVG charts (no plotting library, no scripts) ------------------------------------------

_LABEL_WIDTH, _ROW, _FONT = 290, 26, 'font-family="system-ui, sans-serif" font-size="12"'
_BAR, _BEST, _PLAIN, _FIT, _EMBED, _GRID_LINE = "#4a78c2", "#2ea043", "#1e1e1e", "#e8a13a", "#4a78c2", "#e4e4e4"


def _label_width(runs) -> int:
    """Room for the longest strategy name (about 7 px a character at 12 px), at most _LABEL_WIDTH."""
    longest = max((len(run.name) for run in runs), default=10)
    return max(80, min(_LABEL_WIDTH, 7 * longest + 16))


def _label(text: str, limit: int = 42) -> str:
    shown = text if len(text) <= limit else text[:limit - 1] + "\u2026"
    return f"<title>{html.escape(text)}</title>{html.escape(shown)}"


def score_bars_svg(summaries: Sequence[RunSummary], best_id: int | None = None, width: int = 300) -> str:
    """Horizontal bars of validation score on a fixed 0..1000 axis, plain score marked."""
    runs = [summary.run for summary in summaries]
    height = 30 + max(len(runs), 1) * _ROW
    scale = width / 1000.0
    left = _label_width(runs)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 56}" height="{height}" '
             f'viewBox="0 0 {left + width + 56} {height}" role="img">']
    for tick in range(0, 1001, 250):
        x = left + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 22}" stroke="{_GRID_LINE}"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" {_FONT} fill="#777">{tick}</text>')
    for row, run in enumerate(runs):
        y = 6 + row * _ROW
        parts.append(f'<text x="0" y="{y + 14}" {_FONT}>{_label(run.name)}</text>')
        if run.validation_score is None:
            parts.append(f'<text x="{left + 4}" y="{y + 14}" {_FONT} fill="#b42318">{html.escape(run.status)}</text>')
            continue
        colour = _BEST if run.id == best_id else _BAR
        bar = max(run.validation_score * scale, 1.0)
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{bar:.1f}" height="{_ROW - 8}" fill="{colour}">'
                     f"<title>{html.escape(run.name)}: {run.validation_score:.1f}</title></rect>")
        plain = getattr(run, "plain_score", None)
        if plain is not None:
            x = left + plain * scale
            parts.append(f'<rect x="{x - 1.5:.1f}" y="{y}" width="3" height="{_ROW - 4}" fill="{_PLAIN}">'
                         f"<title>plain {plain:.1f}</title></rect>")
        parts.append(f'<text x="{left + bar + 6:.1f}" y="{y + 14}" {_FONT}>{run.validation_score:.1f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def time_bars_svg(summaries: Sequence[RunSummary], width: int = 240) -> str:
    """Stacked bars: fit seconds then embedding seconds, on one scale for every run."""
    runs = [summary.run for summary in summaries]
    height = 48 + max(len(runs), 1) * _ROW
    longest = max([(run.fit_seconds or 0) + (run.embed_seconds or 0) for run in runs] + [1e-9])
    scale = width / longest
    left = _label_width(runs)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" height="{height}" '
             f'viewBox="0 0 {left + width + 130} {height}" role="img">']
    for row, run in enumerate(runs):
        y = 6 + row * _ROW
        fit, embed = run.fit_seconds or 0.0, run.embed_seconds or 0.0
        parts.append(f'<text x="0" y="{y + 14}" {_FONT}>{_label(run.name)}</text>')
        if fit + embed <= 0:
            parts.append(f'<text x="{left + 4}" y="{y + 14}" {_FONT} fill="#777">{html.escape(run.status)}, no time</text>')
            continue
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{fit * scale:.1f}" height="{_ROW - 8}" fill="{_FIT}">'
                     f"<title>fit {fit:.1f} s</title></rect>")
        parts.append(f'<rect x="{left + fit * scale:.1f}" y="{y + 2}" width="{embed * scale:.1f}" height="{_ROW - 8}" '
                     f'fill="{_EMBED}"><title>embed {embed:.1f} s</title></rect>')
        parts.append(f'<text x="{left + (fit + embed) * scale + 6:.1f}" y="{y + 14}" {_FONT}>'
                     f"{_seconds(fit + embed)} s (fit {_seconds(fit)})</text>")
    legend_y = height - 14
    parts.append(f'<rect x="{left}" y="{legend_y - 9}" width="10" height="10" fill="{_FIT}"/>'
                 f'<text x="{left + 14}" y="{legend_y}" {_FONT}>fit</text>'
                 f'<rect x="{left + 50}" y="{legend_y - 9}" width="10" height="10" fill="{_EMBED}"/>'
                 f'<text x="{left + 64}" y="{legend_y}" {_FONT}>embed</text>')
    parts.append("</svg>")
    return "".join(parts)


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def validation_server_svg(points: Sequence[tuple[str, float, float]], size: int = 240) -> str:
    """Scatter of (label, validation, server) on 0..1000 axes with the diagonal: on it, local
    validation predicted the server exactly."""
    pad = 50
    scale = size / 1000.0
    total = size + pad + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{total}" '
             f'viewBox="0 0 {total} {total}" role="img">',
             f'<rect x="{pad}" y="12" width="{size}" height="{size}" fill="none" stroke="#bbb"/>',
             f'<line x1="{pad}" y1="{12 + size}" x2="{pad + size}" y2="12" stroke="#bbb" stroke-dasharray="4 3"/>',
             f'<text x="{pad + size / 2}" y="{total - 2}" text-anchor="middle" {_FONT} fill="#555">validation</text>',
             f'<text x="10" y="{12 + size / 2}" text-anchor="middle" {_FONT} fill="#555" '
             f'transform="rotate(-90 10 {12 + size / 2})">server</text>']
    for tick in (0, 500, 1000):
        parts.append(f'<text x="{pad + tick * scale:.1f}" y="{size + 26}" text-anchor="middle" {_FONT} fill="#777">'
                     f'{tick}</text><text x="{pad - 4}" y="{12 + size - tick * scale + 4:.1f}" text-anchor="end" '
                     f'{_FONT} fill="#777">{tick}</text>')
    for label, validation, server in points:
        x, y = pad + validation * scale, 12 + size - server * scale
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{_BAR}"><title>{html.escape(label)}: '
                     f"validation {validation:.1f}, server {server:.1f}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


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
