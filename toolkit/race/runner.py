"""The race: strategies run under one wall-clock budget, each scored on the local validation split,
fused into ensembles, and the best picked.

    result = run_race(data, [("face-zs", {}), ("clip-zs", {"model": "ViT-B-16"})], budget_seconds=5400)

- The schedule (toolkit.race.budget): cheap zero-shot strategies first, then trained ones, each group by
  estimated cost (`Strategy.estimate`: nominal embedding speed, a short probe for trained ones).
  A strategy whose estimate exceeds the time left is skipped, not started. A training loop gets a
  deadline that leaves time to embed and write; a strategy still running when the budget ends is
  stopped and recorded as timed-out. A failed strategy (weights not available, a crash) is
  recorded with its reason and the race goes on.
- Each finished strategy: flip TTA and a re-ranking recipe chosen on validation, its own
  submission, and its leaderboard row (toolkit.records.leaderboard) as soon as it ends.
- Ensembles (toolkit.retrieval.ensemble): the best finished strategies fused from the embeddings they already
  computed, weights searched on validation; a run of its own, with its own submission.
- The best run by validation score (ensembles included) is also written as <time>-best.json.
- Ctrl-C keeps everything finished, records the interrupted strategy, writes the best so far and
  raises RaceInterrupted (a KeyboardInterrupt that carries the result).
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

from strategies import create_strategy
from strategies.base import Encoder, Strategy, WeightsUnavailable
from toolkit.race.budget import Budget, OutOfTime, hard_stop, holding_interrupts, images_after_fit, reserve_seconds, schedule
from toolkit.machine.console import console, warn
from toolkit.data.dataset import CompetitionData
from toolkit.retrieval.embed import Embeddings, embed_images
from toolkit.retrieval.ensemble import ENSEMBLE, build_ensemble, ensemble_label
from toolkit.records.leaderboard import Leaderboard, RaceRecorder
from toolkit.views.live import RaceView, race_table  # noqa: F401 (race_table: the results table, shown by tasks)
from toolkit.retrieval.metrics import RetrievalScore
from toolkit.retrieval.rerank import PostProcessing, PostProcessingChoice, choose_post_processing, ranked_indices, recipe
from toolkit.data.split import ValidationSplit, detect_gallery_pattern, make_validation_split
from toolkit.submit.submission import (RESULTS_PER_QUERY, build_submission, load_submission, save_submission,
                                validate_submission)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)?", re.IGNORECASE)
RUNNING = ("estimating", "fitting", "embedding")
OVERRUN_TOLERANCE = 1.0     # seconds past its deadline before a training loop's overrun is noted


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
class RunVectors:
    """A finished run's embeddings, with the flip setting its validation chose: what ensembles fuse."""
    validation: Embeddings             # validation queries then gallery
    test: Embeddings                   # test queries then gallery


@dataclass
class StrategyRun:
    label: str
    status: str = "queued"             # queued / estimating / fitting / embedding, then
                                       # finished / skipped / failed / timed-out
    reason: str = ""
    validation: RetrievalScore | None = None
    submission: Path | None = None
    fit_seconds: float = 0.0
    embed_seconds: float = 0.0
    post_processing: str = "none"      # the re-ranking recipe validation chose
    flip_tta: bool | None = False      # whether validation chose flip TTA (None: an ensemble of both)
    baseline: RetrievalScore | None = None   # validation without flip or post-processing
    notes: list[str] = field(default_factory=list)
    strategy: str = ""                 # the registry name and options the run was created with
    options: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None          # its row in the leaderboard, when one is kept
    estimate: float | None = None      # seconds, from Strategy.estimate before it started
    deadline: float | None = None      # the deadline its fit() was given (time.monotonic)
    started: float | None = None       # time.monotonic() when it started and ended
    ended: float | None = None
    vectors: RunVectors | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended if self.ended is not None else time.monotonic()) - self.started


@dataclass
class RaceResult:
    runs: list[StrategyRun]
    split: ValidationSplit
    seconds: float = 0.0
    race_id: int | None = None         # its row in the leaderboard, when one is kept
    budget_seconds: float | None = None
    best_submission: Path | None = None   # the copy of the best run's submission (<time>-best.json)
    interrupted: bool = False

    @property
    def best(self) -> StrategyRun | None:
        return best_run(self.runs)


class RaceInterrupted(KeyboardInterrupt):
    """Ctrl-C during a race, raised once the finished results and the best so far are written."""

    def __init__(self, result: RaceResult):
        super().__init__("race interrupted")
        self.result = result


def best_run(runs: Sequence[StrategyRun]) -> StrategyRun | None:
    finished = [run for run in runs if run.status == "finished" and run.validation and run.submission]
    return max(finished, key=lambda run: run.validation.score, default=None)


def readable_validation(embeddings: Embeddings, split: ValidationSplit):
    """Query and gallery vectors and labels of the validation split, unreadable images left out."""
    count = len(split.queries)
    readable = embeddings.readable_mask
    queries = [item for item, ok in zip(split.queries, readable[:count]) if ok]
    gallery = [item for item, ok in zip(split.gallery, readable[count:]) if ok]
    return (embeddings.vectors[:count][readable[:count]], embeddings.vectors[count:][readable[count:]],
            [item.label for item in queries], [item.label for item in gallery])


def run_race(data: CompetitionData, specs: Sequence[tuple[str, dict[str, Any]] | Strategy],
             budget_seconds: float | None = None, submissions_dir: Path = Path("submissions"),
             cache_dir: Path | None = None, seed: int = 0, held_out_fraction: float = 0.2,
             gallery_pattern: str | None = None, flip_tta: bool | None = None, post_process: bool = True,
             num_workers: int | None = None, show_progress: bool = True,
             leaderboard: Leaderboard | str | Path | None = None, ensemble_size: int = 3) -> RaceResult:
    """Race the strategies (registry specs (name, options) or Strategy objects) within
    budget_seconds (None: no limit). flip_tta None lets validation decide (when the encoder can
    flip); post_process tries the re-ranking recipes of toolkit.retrieval.rerank on validation and keeps the
    best; ensemble_size finished strategies (the best by validation) are fused into an ensemble
    (below 2: none). leaderboard (a Leaderboard or its file) records the race as it starts and each
    run as it ends. Ctrl-C raises RaceInterrupted after writing the best so far."""
    entries = [_entry(spec) for spec in specs]          # a bad option fails here, before anything runs
    budget = Budget(budget_seconds)
    if gallery_pattern == "auto":
        gallery_pattern = detect_gallery_pattern(data.training)
        console.print(f"validation roles: {f'training files matching {gallery_pattern} take the gallery role (detected)' if gallery_pattern else 'drawn at random (no stylised-file marker detected)'}")
    for strategy, _ in entries:
        strategy.validation_gallery_pattern = gallery_pattern
    split = make_validation_split(data.training, held_out_fraction=held_out_fraction, seed=seed,
                                  gallery_pattern=gallery_pattern)
    console.print(f"validation split: {len(split.held_out_identities)} held-out identities, "
                  f"{len(split.queries)} queries, {len(split.gallery)} gallery; "
                  f"{len(split.fit)} images left to fit on")
    recorder = RaceRecorder(leaderboard, data, budget_seconds, options=dict(
        seed=seed, held_out_fraction=held_out_fraction, gallery_pattern=gallery_pattern, flip_tta=flip_tta,
        post_process=post_process, ensemble_size=ensemble_size))
    race = _Race(data, split, budget, recorder, Path(submissions_dir), flip_tta, post_process,
                 dict(cache_dir=cache_dir, num_workers=num_workers, show_progress=show_progress),
                 runs=[run for _, run in entries])
    try:
        with RaceView(race.runs, budget, enabled=show_progress) as view:
            race.view = view
            race.run_strategies(entries)
            race.run_ensemble(ensemble_size)
    except KeyboardInterrupt:
        race.interrupt()
    return race.finish()


def _entry(spec: tuple[str, dict[str, Any]] | Strategy) -> tuple[Strategy, StrategyRun]:
    if isinstance(spec, Strategy):
        strategy, name, options = spec, spec.name, dict(spec.options)
    else:
        name, options = spec[0], dict(spec[1])
        strategy = create_strategy(name, **options)
    return strategy, StrategyRun(label=strategy.describe(), strategy=name, options=options)


@dataclass
class _Race:
    """One race under way: what every step needs, and the steps."""

    data: CompetitionData
    split: ValidationSplit
    budget: Budget
    recorder: RaceRecorder
    submissions_dir: Path
    flip_tta: bool | None
    post_process: bool
    embed_options: dict
    runs: list[StrategyRun]
    view: RaceView | None = None
    interrupted: bool = False
    recorded: set[int] = field(default_factory=set)

    @property
    def validation_paths(self) -> list[Path]:
        return [item.path for item in self.split.queries + self.split.gallery]

    @property
    def test_paths(self) -> list[Path]:
        return list(self.data.queries) + list(self.data.gallery)

    @property
    def images_after_fit(self) -> int:
        return images_after_fit(len(self.validation_paths), len(self.test_paths), self.flip_tta)

    # --- strategies ------------------------------------------------------------------------------

    def run_strategies(self, entries: list[tuple[Strategy, StrategyRun]]) -> None:
        for strategy, run in entries:
            self.estimate(strategy, run)
        ordered = schedule(entries, trains=lambda entry: entry[0].trains, estimate=lambda entry: entry[1].estimate)
        self.runs[:] = [run for _, run in ordered]
        for strategy, run in ordered:
            if run.status == "queued":
                self.race_strategy(strategy, run)

    def estimate(self, strategy: Strategy, run: StrategyRun) -> None:
        """run.estimate from the strategy (a probe for a trained one; none needed without a budget)."""
        strategy.embed_options = dict(self.embed_options)
        strategy.pending_images = self.validation_paths + self.test_paths
        if strategy.trains and not self.budget.limited:
            return
        run.status = "estimating"
        try:
            with hard_stop(self.budget.end):
                run.estimate = float(strategy.estimate(self.split.fit, self.images_after_fit))
            run.status = "queued"
        except OutOfTime:
            self.end_run(run, "timed-out", "still estimating when the budget ended")
        except Exception as error:  # a failed probe ends this strategy, not the race
            self.end_run(run, "failed", "estimate failed: " + _failure(error, run.label))

    def race_strategy(self, strategy: Strategy, run: StrategyRun) -> None:
        if self.budget.limited and strategy.trains:
            self.estimate(strategy, run)   # again: what earlier strategies cached is now cheap
            if run.status != "queued":
                return
        left = self.budget.left()
        if run.estimate is not None and run.estimate > left:
            self.end_run(run, "skipped", f"estimated {run.estimate:.0f}s, {max(left, 0):.0f}s left")
            return
        console.rule(escape(run.label))
        run.started = time.monotonic()
        try:
            with hard_stop(self.budget.end):
                encoder = self.fit(strategy, run)
                run.status = "embedding"
                self.score_and_submit(encoder, run)
        except OutOfTime:
            self.end_run(run, "timed-out", f"still {run.status} when the budget ended")
        except Exception as error:  # one strategy's crash must not end the race
            self.end_run(run, "failed", _failure(error, run.label))
        else:
            self.end_run(run, "finished")

    def fit(self, strategy: Strategy, run: StrategyRun) -> Encoder:
        """The strategy's encoder; a training loop stops at a deadline that leaves time to embed."""
        run.status = "fitting"
        run.deadline = self.budget.fit_deadline(reserve_seconds(strategy.estimate_seconds(self.images_after_fit)))
        started = time.monotonic()
        encoder = strategy.fit(self.split.fit, run.deadline)
        run.fit_seconds = time.monotonic() - started
        if run.deadline is not None and time.monotonic() > run.deadline + OVERRUN_TOLERANCE:
            run.notes.append(f"fit overran its deadline by {time.monotonic() - run.deadline:.0f}s")
        return encoder

    def score_and_submit(self, encoder: Encoder, run: StrategyRun) -> None:
        validation, chosen = self.choose_on_validation(encoder, run)
        test = self.embed(encoder, run, self.test_paths, run.flip_tta, "test")
        _report_unreadable(test, "test")
        run.submission = self.write_submission(run, test, chosen)
        run.vectors = RunVectors(validation=validation, test=test)
        if test.unreadable:
            run.notes.append(f"{len(test.unreadable)} unreadable test images")
        if encoder.report():
            run.notes.append(encoder.report())

    def choose_on_validation(self, encoder: Encoder, run: StrategyRun) -> tuple[Embeddings, PostProcessing]:
        """Embed the validation split (plain, and mirrored too when flip is undecided); keep the flip
        setting and re-ranking recipe with the best score. Returns that setting's embeddings."""
        flips = [self.flip_tta] if self.flip_tta is not None else ([False, True] if encoder.flippable else [False])
        best: tuple[bool, Embeddings, PostProcessingChoice] | None = None
        for flip in flips:
            embeddings = self.embed(encoder, run, self.validation_paths, flip, "validation")
            if not flip:
                _report_unreadable(embeddings, "training")
            choice = self.choose_post_processing(embeddings)
            if not flip:
                run.baseline = choice.baseline
            if best is None or choice.best_score.score > best[2].best_score.score:
                best = (flip, embeddings, choice)
        flip, embeddings, choice = best
        run.validation, run.post_processing, run.flip_tta = choice.best_score, choice.best.describe(), flip
        return embeddings, choice.best

    def choose_post_processing(self, validation: Embeddings) -> PostProcessingChoice:
        recipes = None if self.post_process else [recipe("none")]
        return choose_post_processing(*readable_validation(validation, self.split), recipes=recipes)

    def embed(self, encoder: Encoder, run: StrategyRun, paths: list[Path], flip: bool, what: str) -> Embeddings:
        description = escape(f"{run.label} {what}{' (flip)' if flip else ''}")   # labels hold [options]
        embeddings = embed_images(encoder, paths, flip_tta=flip, description=description, **self.embed_options)
        run.embed_seconds += embeddings.seconds
        return embeddings

    def write_submission(self, run: StrategyRun, test: Embeddings, chosen: PostProcessing) -> Path:
        """Rank the test gallery for each query with the chosen recipe; validate; save."""
        vectors = test.vectors.copy()
        query_count = len(self.data.queries)
        vectors[~test.readable_mask & (np.arange(len(vectors)) >= query_count)] = 0.0  # unreadable gallery last-ish
        indices = ranked_indices(chosen, vectors[:query_count], vectors[query_count:], RESULTS_PER_QUERY)
        submission = build_submission(self.data.queries, self.data.gallery, indices)
        validate_submission(submission, [path.name for path in self.data.queries], [path.name for path in self.data.gallery])
        return save_submission(submission, self.submissions_dir, run.label)

    # --- ensembles -------------------------------------------------------------------------------

    def run_ensemble(self, size: int) -> None:
        """Fuse the `size` best finished strategies; a run of its own (none with fewer than 2)."""
        members = _ensemble_members(self.runs, size)
        if len(members) < 2:
            return
        if self.budget.limited and time.monotonic() >= self.budget.ensemble_end:
            console.print("[yellow]no time left for an ensemble[/yellow]")
            return
        run = StrategyRun(label=ENSEMBLE, strategy=ENSEMBLE, status="fitting", started=time.monotonic())
        self.runs.append(run)
        try:
            with hard_stop(self.budget.ensemble_end):
                self.fit_ensemble(run, members)
        except OutOfTime:
            self.end_run(run, "timed-out", "still searching weights when the time for ensembles ended")
        except Exception as error:
            self.end_run(run, "failed", _failure(error, run.label))
        else:
            self.end_run(run, "finished")

    def fit_ensemble(self, run: StrategyRun, members: list[StrategyRun]) -> None:
        """Search the weights on validation, choose post-processing for the fused vectors, write the
        submission. Each member contributes the embeddings of the flip setting it chose."""
        search_deadline = None if not self.budget.limited else (time.monotonic() + self.budget.ensemble_end) / 2
        ensemble = build_ensemble([member.vectors.validation for member in members],
                                  [member.vectors.test for member in members],
                                  readable=lambda embeddings: readable_validation(embeddings, self.split),
                                  deadline=search_deadline)
        kept = [members[position] for position in ensemble.members]
        run.label = ensemble_label(_member_names(kept), ensemble.weights)
        run.options = {"members": [member.label for member in kept], "weights": ensemble.weights,
                       "flip": [member.flip_tta for member in kept]}
        run.notes.append(ensemble.search.describe())
        run.fit_seconds = run.seconds
        choice = self.choose_post_processing(ensemble.validation)
        run.baseline, run.validation, run.post_processing = choice.baseline, choice.best_score, choice.best.describe()
        flips = {member.flip_tta for member in kept}
        run.flip_tta = flips.pop() if len(flips) == 1 else None
        run.submission = self.write_submission(run, ensemble.test, choice.best)

    # --- ending runs and the race ----------------------------------------------------------------

    def end_run(self, run: StrategyRun, status: str, reason: str = "") -> None:
        run.status, run.reason = status, reason or run.reason
        run.ended = time.monotonic()
        if status in ("skipped", "timed-out") or (status == "failed" and reason == "interrupted"):
            colour = "yellow" if status == "skipped" else "red"
            console.print(f"[{colour}]{status}[/{colour}] {escape(run.label)}: {escape(run.reason)}", soft_wrap=True)
        self.record(run)

    def record(self, run: StrategyRun) -> None:
        if id(run) not in self.recorded:
            self.recorder.run_ended(run)
            self.recorded.add(id(run))
        if self.view is not None:
            self.view.strategy_ended()

    def interrupt(self) -> None:
        """Ctrl-C: the run under way failed ("interrupted"), the ones not started are skipped."""
        self.interrupted = True
        for run in self.runs:
            if run.status in RUNNING:
                self.end_run(run, "failed", "interrupted")
            elif run.status == "queued":
                self.end_run(run, "skipped", "not started: the race was interrupted")
            else:
                self.record(run)

    def finish(self) -> RaceResult:
        """Copy the best run's submission, close the race row; raise RaceInterrupted after Ctrl-C."""
        result = RaceResult(runs=self.runs, split=self.split, race_id=self.recorder.race_id,
                            budget_seconds=self.budget.seconds, interrupted=self.interrupted)
        with holding_interrupts() as pressed:
            result.best_submission = self.write_best()
            result.seconds = self.budget.used()
            self.recorder.race_ended(result.seconds)
        result.interrupted = result.interrupted or bool(pressed)
        if result.interrupted:
            raise RaceInterrupted(result)
        return result

    def write_best(self) -> Path | None:
        best = best_run(self.runs)
        if best is None:
            return None
        try:
            return save_submission(load_submission(best.submission), self.submissions_dir, "best")
        except (OSError, ValueError) as error:   # a full disk, a file changed under us: the race row still ends
            warn(f"could not copy the best submission {best.submission}: {error}")
            return None


def _ensemble_members(runs: Sequence[StrategyRun], size: int) -> list[StrategyRun]:
    """The finished strategies (not ensembles) with embeddings at hand, best by validation first."""
    candidates = [run for run in runs if run.status == "finished" and run.vectors is not None and run.strategy != ENSEMBLE]
    return sorted(candidates, key=lambda run: -run.validation.score)[:max(size, 0)]


def _member_names(members: Sequence[StrategyRun]) -> list[str]:
    """Each member by its registry name (face-zs), or by its full label when two share a name."""
    names = [member.strategy for member in members]
    return [member.strategy if names.count(member.strategy) == 1 else member.label for member in members]


def _failure(error: Exception, label: str) -> str:
    """The reason a run failed, printed (with the traceback, unless it is missing weights)."""
    if isinstance(error, WeightsUnavailable):
        console.print(f"[red]failed[/red] {escape(str(error))}", soft_wrap=True)
        return str(error)
    reason = f"{type(error).__name__}: {error}"
    console.print(f"[red]failed[/red] {escape(label)}: {escape(reason)}", soft_wrap=True)
    console.print(traceback.format_exc(), style="dim", soft_wrap=True)
    return reason


def _report_unreadable(embeddings: Embeddings, what: str) -> None:
    for path, reason in embeddings.unreadable[:10]:
        warn(f"skipped unreadable {what} image {path}: {reason}")
    if len(embeddings.unreadable) > 10:
        warn(f"... and {len(embeddings.unreadable) - 10} more unreadable {what} images")
