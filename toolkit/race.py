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
from rich.markup import escape
from rich.table import Table

from strategies import create_strategy
from strategies.base import Encoder, WeightsUnavailable
from toolkit.console import console, warn
from toolkit.dataset import CompetitionData
from toolkit.embed import Embeddings, embed_images
from toolkit.leaderboard import Leaderboard, RaceRecorder
from toolkit.metrics import RetrievalScore
from toolkit.rerank import PostProcessing, choose_post_processing, ranked_indices, recipe
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
    post_processing: str = "none"      # the re-ranking recipe validation chose
    flip_tta: bool = False             # whether validation chose flip test-time augmentation
    baseline: RetrievalScore | None = None   # validation without flip or post-processing
    notes: list[str] = field(default_factory=list)
    strategy: str = ""                 # the registry name and options the run was created with
    options: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None          # its row in the leaderboard, when one is kept


@dataclass
class RaceResult:
    runs: list[StrategyRun]
    split: ValidationSplit
    seconds: float = 0.0
    race_id: int | None = None         # its row in the leaderboard, when one is kept

    @property
    def best(self) -> StrategyRun | None:
        finished = [run for run in self.runs if run.status == "finished" and run.validation]
        return max(finished, key=lambda run: run.validation.score, default=None)


def readable_validation(embeddings: Embeddings, split: ValidationSplit):
    """Query and gallery vectors and labels of the validation split, unreadable images left out."""
    count = len(split.queries)
    readable = embeddings.readable_mask
    queries = [item for item, ok in zip(split.queries, readable[:count]) if ok]
    gallery = [item for item, ok in zip(split.gallery, readable[count:]) if ok]
    return (embeddings.vectors[:count][readable[:count]], embeddings.vectors[count:][readable[count:]],
            [item.label for item in queries], [item.label for item in gallery])


def _report_unreadable(embeddings: Embeddings, what: str) -> None:
    for path, reason in embeddings.unreadable[:10]:
        warn(f"skipped unreadable {what} image {path}: {reason}")
    if len(embeddings.unreadable) > 10:
        warn(f"... and {len(embeddings.unreadable) - 10} more unreadable {what} images")


def _choose_on_validation(encoder: Encoder, run: StrategyRun, split: ValidationSplit, flip_tta: bool | None,
                          post_process: bool, embed_options: dict) -> tuple[bool, PostProcessing, float]:
    """Embed the validation split (plain, and mirrored too when flip is undecided) and pick the
    flip setting and re-ranking recipe with the best validation score. Returns (flip, recipe, s)."""
    flip_settings = [flip_tta] if flip_tta is not None else ([False, True] if encoder.flippable else [False])
    recipes = None if post_process else [recipe("none")]
    seconds, best = 0.0, None
    for flip in flip_settings:
        validation = embed_images(encoder, [item.path for item in split.queries + split.gallery], flip_tta=flip,
                                  description=f"{run.label} validation{' (flip)' if flip else ''}", **embed_options)
        seconds += validation.seconds
        if not flip:
            _report_unreadable(validation, "training")
        choice = choose_post_processing(*readable_validation(validation, split), recipes=recipes)
        if not flip:
            run.baseline = choice.baseline
        if best is None or choice.best_score.score > best[2].score:
            best = (flip, choice.best, choice.best_score)
    flip, chosen, score = best
    run.validation, run.post_processing, run.flip_tta = score, chosen.describe(), flip
    return flip, chosen, seconds


def _run_one(encoder: Encoder, run: StrategyRun, data: CompetitionData, split: ValidationSplit,
             submissions_dir: Path, embed_options: dict, flip_tta: bool | None, post_process: bool) -> None:
    flip, chosen, validation_seconds = _choose_on_validation(encoder, run, split, flip_tta, post_process, embed_options)
    test = embed_images(encoder, list(data.queries) + list(data.gallery), flip_tta=flip,
                        description=f"{run.label} test", **embed_options)
    _report_unreadable(test, "test")
    vectors = test.vectors.copy()
    query_count = len(data.queries)
    vectors[~test.readable_mask & (np.arange(len(vectors)) >= query_count)] = 0.0  # unreadable gallery last-ish
    indices = ranked_indices(chosen, vectors[:query_count], vectors[query_count:], RESULTS_PER_QUERY)
    submission = build_submission(data.queries, data.gallery, indices)
    validate_submission(submission, [path.name for path in data.queries], [path.name for path in data.gallery])
    run.submission = save_submission(submission, submissions_dir, run.label)
    run.embed_seconds = validation_seconds + test.seconds
    if test.unreadable:
        run.notes.append(f"{len(test.unreadable)} unreadable test images")
    if encoder.report():
        run.notes.append(encoder.report())


def run_race(data: CompetitionData, specs: Sequence[tuple[str, dict[str, Any]]],
             budget_seconds: float | None = None, submissions_dir: Path = Path("submissions"),
             cache_dir: Path | None = None, seed: int = 0, held_out_fraction: float = 0.2,
             gallery_pattern: str | None = None, flip_tta: bool | None = None, post_process: bool = True,
             num_workers: int | None = None, show_progress: bool = True,
             leaderboard: Leaderboard | str | Path | None = None) -> RaceResult:
    """Race the strategies. flip_tta None lets validation decide (when the encoder can flip);
    post_process tries the re-ranking recipes of toolkit.rerank on validation and keeps the best.
    leaderboard (a Leaderboard or its file) records the race as it starts and each run as it ends."""
    started = time.monotonic()
    recorder = RaceRecorder(leaderboard, data, budget_seconds, options=dict(
        seed=seed, held_out_fraction=held_out_fraction, gallery_pattern=gallery_pattern, flip_tta=flip_tta,
        post_process=post_process))
    deadline = None if budget_seconds is None else started + budget_seconds
    split = make_validation_split(data.training, held_out_fraction=held_out_fraction, seed=seed,
                                  gallery_pattern=gallery_pattern)
    console.print(f"validation split: {len(split.held_out_identities)} held-out identities, "
                  f"{len(split.queries)} queries, {len(split.gallery)} gallery; "
                  f"{len(split.fit)} images left to fit on")
    embed_options = dict(cache_dir=cache_dir, num_workers=num_workers, show_progress=show_progress)
    passes = 1 if flip_tta is False else 2   # flip TTA embeds each image twice (and is tried on validation)
    image_count = passes * (len(split.queries) + len(split.gallery) + len(data.queries) + len(data.gallery))
    runs: list[StrategyRun] = []
    for name, options in specs:
        strategy = create_strategy(name, **options)
        run = StrategyRun(label=strategy.describe(), strategy=name, options=dict(options))
        runs.append(run)
        if deadline is not None:
            estimate, left = strategy.estimate_seconds(image_count), deadline - time.monotonic()
            if estimate > left:
                run.status = "skipped"
                run.reason = f"estimated {estimate:.0f}s, {max(left, 0):.0f}s left"
                console.print(f"[yellow]skipped[/yellow] {escape(run.label)}: {escape(run.reason)}")
                recorder.run_ended(run)
                continue
        console.rule(escape(run.label))
        try:
            fit_started = time.monotonic()
            encoder = strategy.fit(split.fit, deadline)
            run.fit_seconds = time.monotonic() - fit_started
            _run_one(encoder, run, data, split, Path(submissions_dir), embed_options, flip_tta, post_process)
            run.status = "finished"
        except WeightsUnavailable as error:
            run.status, run.reason = "failed", str(error)
            console.print(f"[red]failed[/red] {escape(str(error))}", soft_wrap=True)
        except Exception as error:  # one strategy's crash must not end the race
            run.status, run.reason = "failed", f"{type(error).__name__}: {error}"
            console.print(f"[red]failed[/red] {escape(run.label)}: {escape(run.reason)}", soft_wrap=True)
            console.print(traceback.format_exc(), style="dim", soft_wrap=True)
        recorder.run_ended(run)
    seconds = time.monotonic() - started
    recorder.race_ended(seconds)
    return RaceResult(runs=runs, split=split, seconds=seconds, race_id=recorder.race_id)


def post_processing_label(run: StrategyRun) -> str:
    parts = (["flip"] if run.flip_tta else []) + ([run.post_processing] if run.post_processing != "none" else [])
    return " + ".join(parts) or "none"


def race_table(result: RaceResult) -> Table:
    best = result.best
    table = Table(title="race: local validation (identities held out of training/)")
    left = ("strategy", "status", "post-processing", "submission / reason")
    for column in ("strategy", "status", "score", "plain", "Top1", "Top5", "Top10", "mAP@10", "post-processing",
                   "fit s", "embed s", "submission / reason"):
        table.add_column(column, justify="left" if column in left else "right", no_wrap=column == "strategy",
                         overflow="fold" if column == "submission / reason" else "ellipsis")
    ordered = sorted(result.runs, key=lambda run: -(run.validation.score if run.validation else -1))
    for run in ordered:
        score = run.validation
        cells = [f"{score.score:.1f}", f"{run.baseline.score:.1f}" if run.baseline else "-", f"{score.top1:.3f}",
                 f"{score.top5:.3f}", f"{score.top10:.3f}", f"{score.map_at_10:.3f}",
                 post_processing_label(run)] if score else ["-"] * 7
        detail = str(run.submission) if run.submission else run.reason
        if run.notes:
            detail += f" ({'; '.join(run.notes)})"
        style = "bold green" if run is best else ("red" if run.status == "failed" else None)
        table.add_row(escape(run.label), run.status, *map(escape, cells), f"{run.fit_seconds:.1f}", f"{run.embed_seconds:.1f}",
                      escape(detail), style=style)
    return table
