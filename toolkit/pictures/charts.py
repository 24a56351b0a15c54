"""The report's charts as inline SVG (no plotting library, no scripts): validation score and time
per strategy as bars, validation against server score as a scatter. Each takes plain records
(runs with a name, status, scores and seconds) and returns one <svg> element as text.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

from toolkit.views.text import shorten


_LABEL_WIDTH, _ROW, _FONT = 290, 26, 'font-family="system-ui, sans-serif" font-size="12"'
_BAR, _BEST, _PLAIN, _FIT, _EMBED, _GRID_LINE = "#4a78c2", "#2ea043", "#1e1e1e", "#e8a13a", "#4a78c2", "#e4e4e4"


def _label_width(runs) -> int:
    """Room for the longest strategy name (about 7 px a character at 12 px), at most _LABEL_WIDTH."""
    longest = max((len(run.name) for run in runs), default=10)
    return max(80, min(_LABEL_WIDTH, 7 * longest + 16))


def _label(text: str, limit: int = 42) -> str:
    return f"<title>{html.escape(text)}</title>{html.escape(shorten(text, limit))}"


def score_bars_svg(runs: Sequence[Any], best_id: int | None = None, width: int = 300) -> str:
    """Horizontal bars of validation score on a fixed 0..1000 axis, plain score marked; the run
    with id best_id in green."""
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


def time_bars_svg(runs: Sequence[Any], width: int = 240) -> str:
    """Stacked bars: fit seconds then embedding seconds, on one scale for every run."""
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
