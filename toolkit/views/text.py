"""How single values read on screen and in the report: numbers, times, shortened labels, a run's
post-processing. Plain strings, no markup: the tables escape them for rich or for HTML."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

ELLIPSIS = "\u2026"


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


def abbreviations(labels: Iterable[str], width: int) -> dict[str, str]:
    """Each distinct label as shown in a column `width` characters wide, distinct labels kept
    distinct: a longer one keeps its start and its end around an ellipsis
    ('adapter[base=fa…tre+kr(10,6)'), split where no two read the same (as evenly as that allows);
    where no split tells them apart, numbered ('adapter[base=face-zs,ste…#2')."""
    distinct = sorted(set(labels))
    width = max(width, 4)
    whole = {label for label in distinct if len(label) <= width}
    long = [label for label in distinct if label not in whole]
    if not long:
        return {label: label for label in distinct}
    kept = width - 1                                   # characters either side of the ellipsis
    for tail in sorted(range(kept + 1), key=lambda tail: (abs(kept - 2 * tail), tail)):
        cut = {label: label[:kept - tail] + ELLIPSIS + (label[len(label) - tail:] if tail else "") for label in long}
        if len(set(cut.values())) == len(long) and not whole & set(cut.values()):
            return {**{label: label for label in whole}, **cut}
    numbered = {}
    for number, label in enumerate(long, 1):
        tag = f"#{number}"
        numbered[label] = label[:max(kept - len(tag), 1)] + ELLIPSIS + tag
    return {**{label: label for label in whole}, **numbered}


def compact_paths(text: str) -> str:
    """Long paths in a line of text, shorter: a Python's .../site-packages/ as 'site-packages/', the
    home folder as '~'."""
    text = re.sub(r"\S*/site-packages/", "site-packages/", text)
    home = str(Path.home())
    if home not in ("/", ""):
        text = re.sub(rf"(?<![\w/]){re.escape(home)}(?=/|\b)", "~", text)
    return text


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
