"""Every option of a race and its default, stated once: the command line, the Python API, the
leaderboard's race row and the replay of a run all read them from `RaceConfig`; `race_config`
turns what a person gives (`budget="30m"`, `flip="auto"`, `held_out=0.2`) into one, with one line
for a value it does not take, for `invoke race` and `retrieval_race.race` alike."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from toolkit.data.split import MAX_FOLDS
from toolkit.machine.options import FRACTION, WHOLE, ZERO_OR_MORE, read_number
from toolkit.machine.settings import project_path

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)
AUTO = "auto"
NO_PATTERN = "none"                                  # --gallery-pattern none: roles drawn at random
FLIP_CHOICES = {"auto": None, "on": True, "off": False}
DEFAULT_STRATEGIES = "face-zs,adapter,cnn-zs,clip-zs"   # what a race races unless told; zero-shot first
OFFLINE_STRATEGIES = "face-zs,cnn-zs"                   # their weights ship as packages: the demo's
NOTHING_RACED = "no strategy had finished; nothing written"   # what a race stopped before any run ended kept


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


def parse_duration(text: str | float | int | None, option: str = "--budget") -> float | None:
    """'90m', '1h30m', '45s', '1.5h' -> seconds; None or '' -> None (no budget); a Python number is
    seconds. Text needs a unit on every part: '90' is refused (is it seconds or minutes?)."""
    if text is None or text == "":
        return None
    if isinstance(text, bool):
        raise ValueError(f"{option} {text}: give a duration such as 90m, 1h30m or 45s")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        cleaned = text.strip().lower().replace(" ", "")
        seconds, position = 0.0, 0
        while position < len(cleaned):
            match = _DURATION_PART.match(cleaned, position)
            if not match or match.end() == position:
                raise ValueError(f"{option} {text}: cannot read duration; write e.g. 90m, 1h30m or 45s")
            if not match.group(2):
                raise ValueError(f"{option} {text}: give a unit, e.g. {match.group(1)}m or {match.group(1)}s")
            seconds += float(match.group(1)) * {"h": 3600, "m": 60, "s": 1}[match.group(2).lower()]
            position = match.end()
        if position == 0:
            raise ValueError(f"{option} {text}: cannot read duration; write e.g. 90m, 1h30m or 45s")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{option} {text}: give a duration above 0, e.g. 90m")
    return seconds


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
    num_workers         DataLoader worker processes for embedding (None: half the cores for
                        decoding beside the model; one per core for a model that runs in them, face-zs)
    show_progress       live table and progress bars
    submissions_dir     where submission files go
    cache_dir           the embedding cache (None: $RETRIEVAL_RACE_CACHE or ~/.cache)
    cluster             a Ray cluster to race the strategies on, all at once: "local", "auto",
                        "ray://host:10001" (toolkit.race.cluster); None: one after another here
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
    cluster: str | None = None

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


def race_config(budget: str | float | None = None, seed: int | str = RaceConfig.seed, flip: str = "auto",
                workers: int | str | None = None, gallery_pattern: str | None = RaceConfig.gallery_pattern,
                held_out: float | str = RaceConfig.held_out_fraction, submissions: str | Path | None = None,
                rerank: bool = RaceConfig.post_process, flags: bool = True, **more: Any) -> RaceConfig:
    """A RaceConfig from what a person gives (the command line's options, the API's keywords; the
    defaults are RaceConfig's). `submissions` None: submissions/ in the project folder. Raises
    ValueError (one line, naming --seed or seed as `flags` says) for a value it does not take."""
    def name(option: str) -> str:
        return f"--{option.replace('_', '-')}" if flags else option
    if flip not in FLIP_CHOICES:
        raise ValueError(f"{name('flip')} takes auto, on or off, not {flip!r}")
    return RaceConfig(budget_seconds=parse_duration(budget, name("budget")), seed=read_number(seed, name("seed"), WHOLE),
                      flip_tta=FLIP_CHOICES[flip],
                      num_workers=read_number(workers, name("workers"), ZERO_OR_MORE),
                      gallery_pattern=None if gallery_pattern in (None, NO_PATTERN) else gallery_pattern,
                      held_out_fraction=read_number(held_out, name("held_out"), FRACTION),
                      submissions_dir=Path(submissions) if submissions else project_path(RaceConfig.submissions_dir),
                      post_process=bool(rerank), **more)
