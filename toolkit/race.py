"""The race: each strategy fitted, scored on the local validation split, and its submission written.

A budget is stated once; before a strategy starts, its estimated cost is compared with the time
left and it is skipped (not half-run) when it cannot finish. A strategy that fails (weights not
available, a crash) is recorded with its reason and the race goes on. The best strategy by
validation score is reported.
"""
from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.table import Table

from strategies import create_strategy
from strategies.base import Encoder, WeightsUnavailable
from toolkit.console import console, warn
from toolkit.dataset import CompetitionData
from toolkit.embed import Embeddings, embed_images
from toolkit.metrics import RetrievalScore, score_rankings
from toolkit.search import top_k
from toolkit.split import ValidationSplit, make_validation_split
from toolkit.submission import RESULTS_PER_QUERY, build_submission, save_submission, validate_submission

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)


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


@dataclass
class StrategyRun:
    label: str
    status: str = "pending"            # finished / skipped / failed
    reason: str = ""
    validation: RetrievalScore | None = None
    submission: Path | None = None
    fit_seconds: float = 0.0
    embed_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class RaceResult:
    runs: list[StrategyRun]
    split: ValidationSplit
    seconds: float = 0.0

    @property
    def best(self) -> StrategyRun | None:
        finished = [run for run in self.runs if run.status == "finished" and run.validation]
        return max(finished, key=lambda run: run.validation.score, default=None)


def rank_and_score(encoder_embeddings: Embeddings, query_labels: Sequence[str], gallery_labels: Sequence[str]) -> RetrievalScore:
    """Validation score of one set of embeddings: queries first, then gallery, in one array."""
    count = len(query_labels)
    readable = encoder_embeddings.readable_mask
    query_rows = np.flatnonzero(readable[:count])
    gallery_rows = count + np.flatnonzero(readable[count:])
    labels = np.array(list(query_labels) + list(gallery_labels), dtype=object)
    _, indices = top_k(encoder_embeddings.vectors[query_rows], encoder_embeddings.vectors[gallery_rows], RESULTS_PER_QUERY)
    ranked = [[labels[gallery_rows[index]] for index in row] for row in indices]
    return score_rankings(ranked, labels[query_rows].tolist(), labels[gallery_rows].tolist())


def _report_unreadable(embeddings: Embeddings, what: str) -> None:
    for path, reason in embeddings.unreadable[:10]:
        warn(f"skipped unreadable {what} image {path}: {reason}")
    if len(embeddings.unreadable) > 10:
        warn(f"... and {len(embeddings.unreadable) - 10} more unreadable {what} images")


def _run_one(encoder: Encoder, run: StrategyRun, data: CompetitionData, split: ValidationSplit,
             submissions_dir: Path, embed_options: dict) -> None:
    validation_images = split.queries + split.gallery
    validation = embed_images(encoder, [item.path for item in validation_images],
                              description=f"{run.label} validation", **embed_options)
    _report_unreadable(validation, "training")
    run.validation = rank_and_score(validation, [item.label for item in split.queries],
                                    [item.label for item in split.gallery])

    test = embed_images(encoder, list(data.queries) + list(data.gallery),
                        description=f"{run.label} test", **embed_options)
    _report_unreadable(test, "test")
    vectors = test.vectors.copy()
    query_count = len(data.queries)
    vectors[~test.readable_mask & (np.arange(len(vectors)) >= query_count)] = 0.0  # unreadable gallery last-ish
    _, indices = top_k(vectors[:query_count], vectors[query_count:], RESULTS_PER_QUERY)
    submission = build_submission(data.queries, data.gallery, indices)
    validate_submission(submission, [path.name for path in data.queries], [path.name for path in data.gallery])
    run.submission = save_submission(submission, submissions_dir, run.label)
    run.embed_seconds = validation.seconds + test.seconds
    unreadable = len(validation.unreadable) + len(test.unreadable)
    if unreadable:
        run.notes.append(f"{unreadable} unreadable images")
    if encoder.report():
        run.notes.append(encoder.report())


def run_race(data: CompetitionData, specs: Sequence[tuple[str, dict[str, Any]]],
             budget_seconds: float | None = None, submissions_dir: Path = Path("submissions"),
             cache_dir: Path | None = None, seed: int = 0, held_out_fraction: float = 0.2,
             gallery_pattern: str | None = None, flip_tta: bool = False,
             num_workers: int | None = None, show_progress: bool = True) -> RaceResult:
    started = time.monotonic()
    deadline = None if budget_seconds is None else started + budget_seconds
    split = make_validation_split(data.training, held_out_fraction=held_out_fraction, seed=seed,
                                  gallery_pattern=gallery_pattern)
    console.print(f"validation split: {len(split.held_out_identities)} held-out identities, "
                  f"{len(split.queries)} queries, {len(split.gallery)} gallery; "
                  f"{len(split.fit)} images left to fit on")
    embed_options = dict(cache_dir=cache_dir, flip_tta=flip_tta, num_workers=num_workers,
                         show_progress=show_progress)
    image_count = len(split.queries) + len(split.gallery) + len(data.queries) + len(data.gallery)
    runs: list[StrategyRun] = []
    for name, options in specs:
        strategy = create_strategy(name, **options)
        run = StrategyRun(label=strategy.describe())
        runs.append(run)
        if deadline is not None:
            estimate, left = strategy.estimate_seconds(image_count), deadline - time.monotonic()
            if estimate > left:
                run.status = "skipped"
                run.reason = f"estimated {estimate:.0f}s, {max(left, 0):.0f}s left"
                console.print(f"[yellow]skipped[/yellow] {run.label}: {run.reason}")
                continue
        console.rule(run.label)
        try:
            fit_started = time.monotonic()
            encoder = strategy.fit(split.fit, deadline)
            run.fit_seconds = time.monotonic() - fit_started
            _run_one(encoder, run, data, split, Path(submissions_dir), embed_options)
            run.status = "finished"
        except WeightsUnavailable as error:
            run.status, run.reason = "failed", str(error)
            console.print(f"[red]failed[/red] {error}", soft_wrap=True)
        except Exception as error:  # one strategy's crash must not end the race
            run.status, run.reason = "failed", f"{type(error).__name__}: {error}"
            console.print(f"[red]failed[/red] {run.label}: {run.reason}", soft_wrap=True)
            console.print(traceback.format_exc(), style="dim", soft_wrap=True)
    return RaceResult(runs=runs, split=split, seconds=time.monotonic() - started)


def race_table(result: RaceResult) -> Table:
    best = result.best
    table = Table(title="race: local validation (identities held out of training/)")
    for column in ("strategy", "status", "score", "Top1", "Top5", "Top10", "mAP@10", "fit s", "embed s", "submission / reason"):
        table.add_column(column, justify="right" if column not in ("strategy", "status", "submission / reason") else "left")
    ordered = sorted(result.runs, key=lambda run: -(run.validation.score if run.validation else -1))
    for run in ordered:
        score = run.validation
        cells = [f"{score.score:.1f}", f"{score.top1:.3f}", f"{score.top5:.3f}", f"{score.top10:.3f}",
                 f"{score.map_at_10:.3f}"] if score else ["-"] * 5
        detail = str(run.submission) if run.submission else run.reason
        if run.notes:
            detail += f" ({'; '.join(run.notes)})"
        style = "bold green" if run is best else ("red" if run.status == "failed" else None)
        table.add_row(run.label, run.status, *cells, f"{run.fit_seconds:.1f}", f"{run.embed_seconds:.1f}", detail, style=style)
    return table
