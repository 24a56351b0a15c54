"""How single values read on screen and in the report: numbers, times, shortened labels, a run's
post-processing. Plain strings, no markup: the tables escape them for rich or for HTML."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

ELLIPSIS = "\u2026"


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def interval_text(low: float | None, high: float | None) -> str:
    """'921.4-948.0', or '-' when there is no interval."""
    return "-" if low is None or high is None else f"{low:.1f}-{high:.1f}"


def number(value: float | None, digits: int) -> str:
    """`value` with `digits` decimals, or '-' when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def local_time(moment: datetime) -> str:
    """A stored time (UTC, naive or not) in this machine's time zone: '2025-06-01 12:00'."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def budget_text(seconds: float | None) -> str | None:
    """'budget 20 min', or None without a budget."""
    return f"budget {seconds / 60:g} min" if seconds else None


def post_processing_text(run: Any) -> str:
    """'flip + dual-softmax(temperature=0.1)', 'none', or '-' when unknown (older rows, runs with no
    validation). Reads `flip_tta` and `post_processing` (a recipe, or the text of one) of a
    leaderboard row or a race's run."""
    if run.flip_tta is None and run.post_processing is None:
        return "-"
    recipe = run.post_processing       # a Recipe; a row's text that no longer reads as one stays text
    text = recipe if isinstance(recipe, str) else recipe.describe() if recipe is not None else None
    parts = (["flip"] if run.flip_tta else []) + ([text] if text not in (None, "none") else [])
    return " + ".join(parts) or "none"
