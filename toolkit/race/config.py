"""Every option of a race and its default, stated once: the command line, the Python API, the
leaderboard's race row and the replay of a run all read them from `RaceConfig`."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from toolkit.data.split import MAX_FOLDS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)
AUTO = "auto"


def parse_value(text: str) -> Any:
    """An option's value as typed: true/yes/on, false/no/off, none/null, an int, a float, else the text."""
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_duration(text: str | float | int | None) -> float | None:
    """'90m', '1h30m', '45s', '5400' (seconds) -> seconds; None or '' -> None (no budget)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    cleaned = text.strip().lower().replace(" ", "")
    total, position = 0.0, 0
    while position < len(cleaned):
        match = _DURATION_PART.match(cleaned, position)
        if not match:
            raise ValueError(f"cannot read duration {text!r}; write e.g. 90m, 1h30m, 45s or 5400")
        unit = (match.group(2) or "s").lower()
        total += float(match.group(1)) * {"h": 3600, "m": 60, "s": 1}[unit]
        position = match.end()
    if position == 0:
        raise ValueError(f"cannot read duration {text!r}; write e.g. 90m, 1h30m, 45s or 5400")
    return total


@dataclass(frozen=True)
class RaceConfig:
    """How a race runs.

    budget_seconds      wall-clock budget of the whole race (None: no limit)
    seed, held_out_fraction   the validation split: identities held out of training/
    max_folds           with few identities held out, up to this many identity-disjoint folds
                        (toolkit.data.split.make_validation_folds); 1: a single split
    test_shaped         validation holds as many gallery images a query as the test does
                        (distractor identities whose queries are left out)
    gallery_pattern     filename glob of the training files that take the gallery role in
                        validation (e.g. "*_s.*"); "auto" detects a marker; None: random roles
    flip_tta            flip test-time augmentation: None lets validation decide
    post_process        try the re-ranking recipes on validation and keep what wins
    ensemble_size       the best finished strategies fused into an ensemble (below 2: none)
    num_workers         DataLoader worker processes for decoding (None: half the cores)
    show_progress       live table and progress bars
    submissions_dir     where submission files go
    cache_dir           the embedding cache (None: $RETRIEVAL_RACE_CACHE or ~/.cache)
    """

    budget_seconds: float | None = None
    seed: int = 0
    held_out_fraction: float = 0.2
    max_folds: int = MAX_FOLDS
    test_shaped: bool = True
    gallery_pattern: str | None = AUTO
    flip_tta: bool | None = None
    post_process: bool = True
    ensemble_size: int = 3
    num_workers: int | None = None
    show_progress: bool = True
    submissions_dir: Path = Path("submissions")
    cache_dir: Path | None = None

    # what the race row keeps: what decides the numbers, not where files go or how it is shown
    RECORDED = ("seed", "held_out_fraction", "max_folds", "test_shaped", "gallery_pattern", "flip_tta",
                "post_process", "ensemble_size")

    def recorded(self) -> dict[str, Any]:
        """The options a race row stores (JSON-able)."""
        values = asdict(self)
        return {key: values[key] for key in self.RECORDED}

    @classmethod
    def from_recorded(cls, options: Mapping[str, Any] | None) -> "RaceConfig":
        """The config a race row describes; what it lacks takes today's defaults."""
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in (options or {}).items() if key in known})
