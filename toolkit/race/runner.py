"""The race: strategies run under one wall-clock budget, each scored on the local validation split,
fused into ensembles, and the best picked.

    result = run_race(data, [create_strategy("face-zs"), create_strategy("adapter")], RaceConfig(budget_seconds=5400))

- The schedule (toolkit.race.budget): zero-shot strategies first, then trained ones, each group by
  estimated cost. A strategy whose estimate exceeds the time left is skipped, not started; a
  training loop gets a deadline that leaves time to embed and write; a strategy still running when
  the budget ends is stopped and recorded as timed-out; a failed one is recorded with its reason.
  With a budget, zero-shot strategies all validate before their tests are embedded, best first.
- Each finished strategy: flip TTA and a re-ranking recipe chosen on validation, its own
  submission, and its leaderboard row as soon as it ends.
- Ensembles (toolkit.retrieval.ensemble) of the best finished strategies, from their embeddings;
  the best run by validation score is also written as <time>-best.json.
- Ctrl-C keeps everything finished and raises RaceInterrupted, which carries the result.
- With `config.cluster`, strategies run at once on Ray workers (toolkit.race.cluster); the rest as here.
What a person sees comes from the RaceObserver it is given (toolkit.views has the terminal's).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from toolkit.data.dataset import CompetitionData
from toolkit.data.split import detect_gallery_pattern
from toolkit.models.weights import NoSuchWeights, WeightsUnavailable
from toolkit.machine.cpu_memory import keep_freed_memory_for_reuse
from toolkit.machine.interrupts import holding_interrupts, interrupts_deferred, press_answered, raise_if_stopped, \
    say_kept
from toolkit.race.cluster import cluster_session, race_on_cluster
from toolkit.race.remote import Precomputed
from toolkit.race.budget import Budget, OutOfTime, hard_stop, images_after_fit, reserve_seconds, schedule
from toolkit.race.config import AUTO, RaceConfig
from toolkit.race.contract import Fitted, RaceContext, Strategy
from toolkit.race.ensembles import run_ensemble
from toolkit.race.evaluation import evaluate
from toolkit.race.runs import RUNNING, RaceInterrupted, RaceObserver, RaceResult, RunVectors, StrategyRun
from toolkit.race.selection import choose_best, outclassed
from toolkit.race.validation import Yardstick, gallery_per_query
from toolkit.records.recorder import RaceRecorder
from toolkit.records.store import Leaderboard
from toolkit.retrieval.embed import Embeddings
from toolkit.retrieval.ensemble import fuse_embeddings
from toolkit.retrieval.ranking import rank_gallery
from toolkit.retrieval.recipes import PLAIN, Recipe
from toolkit.retrieval.uncertainty import score_interval
from toolkit.submit.submission import RESULTS_PER_QUERY, build_submission, load_submission, save_submission, \
    validate_submission

OVERRUN_TOLERANCE = 1.0     # seconds past its deadline before a training loop's overrun is noted


class Validated(NamedTuple):
    """A run fitted and scored on validation, its test not yet embedded."""
    strategy: Strategy
    run: StrategyRun
    fits: list[Fitted]
    folds: list[Embeddings]
    at: float          # when it was validated: the wait until its test is not its own time


def run_race(data: CompetitionData, strategies: Sequence[Strategy], config: RaceConfig = RaceConfig(),
             leaderboard: Leaderboard | str | Path | None = None, observer: RaceObserver | None = None) -> RaceResult:
    """Race the strategies (created from the registry: strategies.create_strategy) as `config`
    says. `leaderboard` (a Leaderboard or its file) records the race as it starts and each run as
    it ends; `observer` is told what happens (None: nothing is shown). Ctrl-C raises
    RaceInterrupted after writing the best so far."""
    with cluster_session(config.cluster):       # no cluster: nothing; else Ray joined, then left
        return _run_race(data, strategies, config, leaderboard, observer or RaceObserver())


def make_yardstick(data: CompetitionData, config: RaceConfig) -> Yardstick:
    """The folds every run is scored on, as the config says (the same on every machine)."""
    return Yardstick.make(data.training, config.held_out_fraction, config.seed, config.gallery_pattern,
                          config.max_folds, gallery_per_query(data) if config.test_shaped else None)


def _run_race(data: CompetitionData, strategies: Sequence[Strategy], config: RaceConfig,
              leaderboard: Leaderboard | str | Path | None, observer: RaceObserver) -> RaceResult:
    budget = Budget(config.budget_seconds)
    detected = config.gallery_pattern == AUTO
    if detected:
        config = replace(config, gallery_pattern=detect_gallery_pattern(data.training))
    observer.roles(config.gallery_pattern, detected=detected)
    yardstick = make_yardstick(data, config)
    observer.split(yardstick)
    with holding_interrupts() as pressed:   # the race row is not begun without the code that ends it
        recorder = RaceRecorder(leaderboard, data, config.budget_seconds, options=config.recorded(),
                                yardstick=yardstick)
        entries = [(strategy, StrategyRun(label=strategy.describe(), strategy=strategy.name, trains=strategy.trains,
                                          options=dict(strategy.options))) for strategy in strategies]
        race = Race(data, yardstick, budget, recorder, config, observer, runs=[run for _, run in entries])
    try:
        if pressed:
            raise KeyboardInterrupt
        with observer.watching(race.runs, budget):
            race.run_strategies(entries)
            run_ensemble(race, config.ensemble_size)
    except KeyboardInterrupt:
        press_answered()
        with holding_interrupts():          # a second Ctrl-C must not cut the recording of the runs
            race.interrupt()
    return race.finish()


@dataclass
class Race:
    """One race under way: what every step needs, and the steps."""

    data: CompetitionData
    yardstick: Yardstick
    budget: Budget
    recorder: RaceRecorder
    config: RaceConfig
    observer: RaceObserver
    runs: list[StrategyRun]
    interrupted: bool = False
    recorded: set[int] = field(default_factory=set)
    prepared: dict[int, Fitted] = field(default_factory=dict)   # zero-shot fits made to estimate, by run

    def __post_init__(self):
        keep_freed_memory_for_reuse()   # this process runs the models (in process or a cluster's worker): ~2x CPU speed

    @property
    def validation_paths(self) -> list[Path]:
        """Every validation image a strategy may embed: the choice split's, then the folds' others."""
        paths = dict.fromkeys(self.yardstick.choice_paths)
        for fold in self.yardstick.fold_paths:
            paths.update(dict.fromkeys(fold))
        return list(paths)

    @property
    def test_paths(self) -> list[Path]:
        return list(self.data.queries) + list(self.data.gallery)

    @cached_property
    def context(self) -> RaceContext:
        """What every strategy is told (for a trained one, its validation is the folds' images);
        the yardstick and the config do not change during a race, so it is made once."""
        config = self.config
        folds = [path for paths in self.yardstick.fold_paths for path in paths]
        return RaceContext(gallery_pattern=config.gallery_pattern,
                           pending_images=tuple(self.validation_paths + self.test_paths),
                           images_after_fit=images_after_fit(len(folds), len(self.test_paths), config.flip_tta),
                           flip_tta=config.flip_tta, cache_dir=config.cache_dir, num_workers=config.num_workers,
                           show_progress=config.show_progress)

    # --- strategies ------------------------------------------------------------------------------

    def run_strategies(self, entries: list[tuple[Strategy, StrategyRun]]) -> None:
        if self.config.cluster:
            race_on_cluster(self, entries)      # each strategy on a worker, at the same time
            return
        context = self.context
        for strategy, run in entries:
            self.estimate(strategy, run, context)
        ordered = schedule(entries, trains=lambda entry: entry[0].trains, estimate=lambda entry: entry[1].estimate)
        self.runs[:] = [run for _, run in ordered]
        validated: list[Validated] = []     # with a budget: zero-shot runs validated, the test not yet embedded
        for strategy, run in ordered:
            if run.status != "queued":
                continue
            if self.budget.limited and not strategy.trains:
                validated += self.race_strategy(strategy, run, context, test_later=True)
                continue
            self.embed_tests(validated)
            validated = []
            self.race_strategy(strategy, run, context)
        self.embed_tests(validated)

    def estimate(self, strategy: Strategy, run: StrategyRun, context: RaceContext) -> None:
        """run.estimate from the strategy (a probe for a trained one; none needed without a budget)."""
        if strategy.trains and not self.budget.limited:
            return
        run.status = "estimating"
        try:
            if strategy.trains:
                with hard_stop(self.budget.end):
                    run.estimate = float(strategy.estimate(self.yardstick.folds[0].fit,
                                                           self.context_for(strategy, context)))
            else:       # its model loaded, then arithmetic: bounded, so never cut short
                self.prepare(strategy, run)
                run.estimate = float(strategy.estimate(self.yardstick.folds[0].fit,
                                                       self.context_for(strategy, context, run)))
            run.status = "queued"
        except OutOfTime:
            self.end_run(run, "timed-out", "still estimating when the budget ended")
        except WeightsUnavailable as error:
            self.without_weights(run, error)
        except Exception as error:  # a failed probe ends this strategy, not the race
            self.end_run(run, "failed", "estimate failed: " + self.failure(run, error))

    def prepare(self, strategy: Strategy, run: StrategyRun) -> None:
        """A zero-shot strategy is fitted (its model loaded) before it is estimated, so that its
        estimate counts only the images its encoder has not cached; the race then uses this fit.
        One without its weights raises WeightsUnavailable; one that fails otherwise is left to fail
        in its run, with the reason."""
        if strategy.trains or id(run) in self.prepared:
            return
        try:
            self.prepared[id(run)] = strategy.fit([], self.context_for(strategy, self.context))
        except WeightsUnavailable:
            raise
        except Exception as error:   # noqa: BLE001 - the same error is reported when the run fits
            raise_if_stopped(error)

    def race_strategy(self, strategy: Strategy, run: StrategyRun, context: RaceContext,
                      test_later: bool = False) -> list[Validated]:
        """Fit, validate, embed the test, submit; `test_later`: the validated run is returned for embed_tests."""
        if self.budget.limited and strategy.trains:
            self.estimate(strategy, run, context)   # again: what earlier strategies cached is now cheap
            if run.status != "queued":
                return []
        left = self.budget.left()
        if run.estimate is not None and run.estimate > left:
            self.end_run(run, "skipped", f"estimated {run.estimate:.0f}s, {max(left, 0):.0f}s left")
            return []
        run.started = time.monotonic()
        self.observer.started(run)
        made: list[Validated] = []

        def fit_and_validate() -> None:
            fits = self.fit(strategy, run, context)
            run.status = "embedding"
            made.append(Validated(strategy, run, fits, self.validate(strategy, fits, run), time.monotonic()))
        if not self.attempt(run, fit_and_validate) or test_later:
            return made
        self.test_and_submit(made[0])
        return []

    def embed_tests(self, validated: list[Validated]) -> None:
        """The validated runs' tests, best validation first; a run whose validation interval lies
        wholly below the best's is not embedded on the test: it cannot be chosen, and its time is
        left to the strategies after it."""
        ranked = sorted(validated, key=lambda item: -item.run.validation.score)
        for item in ranked:
            item.run.started += time.monotonic() - item.at
            beaten = outclassed(item.run, ranked[0].run)
            if beaten:
                self.end_run(item.run, "skipped", beaten)
            else:
                self.test_and_submit(item)

    def test_and_submit(self, item: Validated) -> None:
        encoders = [fit.encoder for fit in item.fits]
        if self.attempt(item.run, lambda: self.submit(item.run, item.folds, self.embed_test(item.strategy, encoders,
                                                                                          item.run), encoders[0].report())):
            self.end_run(item.run, "finished")

    def attempt(self, run: StrategyRun, step: Callable[[], None], until: float | None = None, late: str = "") -> bool:
        """Run one step of a run to its end by `until` (default: the budget's end; `late`: the reason
        when it is cut there); False when it ended the run instead (timed out, without weights, failed)."""
        try:
            with hard_stop(self.budget.end if until is None else until):
                step()
            return True
        except OutOfTime:
            self.end_run(run, "timed-out", late or f"still {run.status} when the budget ended")
        except WeightsUnavailable as error:
            self.without_weights(run, error)
        except Exception as error:  # one strategy's crash must not end the race
            self.end_run(run, "failed", self.failure(run, error))
        return False

    def folds_for(self, strategy: Strategy) -> int:
        """How many fits a strategy makes: one per fold when it trains, else one."""
        return len(self.yardstick.folds) if strategy.trains else 1

    def context_for(self, strategy: Strategy, context: RaceContext, run: StrategyRun | None = None) -> RaceContext:
        """A trained strategy is fitted once per fold; a zero-shot one once, and it embeds the
        choice split, not the folds, after fitting: the model passes its encoder has not cached
        yet, when it was fitted to be estimated (prepare), else every image's."""
        if strategy.trains:
            return replace(context, fits=self.folds_for(strategy))
        fitted = self.prepared.get(id(run)) if run is not None else None
        if fitted is None:
            passes = images_after_fit(len(self.yardstick.choice_paths), len(self.test_paths), self.config.flip_tta)
        else:
            passes = context.passes(fitted.encoder, self.yardstick.choice_paths + self.test_paths)
        return replace(context, images_after_fit=passes)

    def fit(self, strategy: Strategy, run: StrategyRun, context: RaceContext) -> list[Fitted]:
        """The strategy's encoders, one per fold it fits on; a training loop stops at a deadline that
        leaves time to embed (with several folds, the time to the deadline is shared among them)."""
        run.status = "fitting"
        context = self.context_for(strategy, context, run)
        run.deadline = self.budget.fit_deadline(
            reserve_seconds(strategy.estimate_seconds(context.images_after_fit, context)))
        started = time.monotonic()
        fits, folds = [], self.folds_for(strategy)
        for number, fold in enumerate(self.yardstick.folds[:folds]):
            left = folds - number           # the last fit gets the run's deadline itself
            deadline = run.deadline if run.deadline is None or left == 1 else \
                time.monotonic() + (run.deadline - time.monotonic()) / left
            prepared = self.prepared.pop(id(run), None)
            fits.append(prepared or strategy.fit(fold.fit, context, deadline))
        run.fit_seconds = time.monotonic() - started
        if run.deadline is not None and time.monotonic() > run.deadline + OVERRUN_TOLERANCE:
            run.notes.append(f"fit overran its deadline by {time.monotonic() - run.deadline:.0f}s")
        if fits[0].report:
            run.notes.append(fits[0].report + (f" (fold 1 of {folds})" if folds > 1 else ""))
        run.details = dict(fits[0].details)
        return fits

    def flips(self, encoder) -> list[bool]:
        """The flip settings validation tries: the race's, else plain and (when it can) mirrored."""
        flip_tta = self.config.flip_tta
        return [flip_tta] if flip_tta is not None else ([False, True] if encoder.flippable else [False])

    def validate(self, strategy: Strategy, fits: list[Fitted], run: StrategyRun) -> list[Embeddings]:
        """Choose flip and post-processing on validation and score the choice on the yardstick;
        returns the yardstick folds' embeddings at the chosen flip."""
        encoders = [fit.encoder for fit in fits]
        flips = self.flips(encoders[0])
        recipes = None if self.config.post_process else [PLAIN]
        evaluation = evaluate(encoders, not strategy.trains, self.yardstick, flips, recipes,  # plain and
                              embed=lambda enc, paths, flip, what:          # mirrored in one pass
                              self.embed(enc, run, paths, flip, what, mirrored_too=len(flips) > 1))
        self.observer.unreadable("training", evaluation.first.unreadable)
        run.validation, run.baseline = evaluation.validation, evaluation.baseline
        run.flip_tta, run.post_processing = evaluation.flip, evaluation.recipe
        if evaluation.note:
            run.notes.append(evaluation.note)
        return evaluation.folds

    def submit(self, run: StrategyRun, folds: list[Embeddings], test: Embeddings, encoder_report: str = "") -> None:
        """Rank the test set with the validated choice and write the run's submission."""
        self.observer.unreadable("test", test.unreadable)
        self.write_submission(run, test, run.post_processing)
        run.vectors = RunVectors(validation=folds, test=test)
        if test.unreadable:
            run.notes.append(f"{len(test.unreadable)} unreadable test images")
        if encoder_report:
            run.notes.append(encoder_report)

    def embed_test(self, strategy: Strategy, encoders: list, run: StrategyRun) -> Embeddings:
        """The test set as every fold's encoder embeds it, fused with equal weights (the cosine of
        fused vectors is the mean of the folds' cosines): bagging, steadier than one fold (lfw-style,
        adapter, 3 folds: single folds 958.6-968.4, fused 965.4). The other folds' encoders are left
        out when embedding the test again with them would not fit in the time left."""
        if len(encoders) > 1 and self.budget.limited:
            again = (len(encoders) - 1) * strategy.estimate_seconds(len(self.test_paths), self.context)
            if reserve_seconds(again) > self.budget.left():
                run.notes.append(f"test embedded by fold 1's encoder only: the other {len(encoders) - 1} "
                                 f"would take about {again:.0f}s")
                encoders = encoders[:1]
        tests = [self.embed(encoder, run, self.test_paths, run.flip_tta,
                            "test" if len(encoders) == 1 else f"test, fold {number} of {len(encoders)}")
                 for number, encoder in enumerate(encoders, 1)]
        if len(tests) == 1:
            return tests[0]
        run.notes.append(f"test ranked with the {len(tests)} folds' encoders fused")
        return fuse_embeddings(tests, [1.0] * len(tests))

    def embed(self, encoder, run: StrategyRun, paths: Sequence[Path], flip: bool, what: str,
              mirrored_too: bool = False) -> Embeddings:
        """Embed for this run; `mirrored_too`: the mirrored embeddings as well (flip is tried next)."""
        if isinstance(encoder, Precomputed):        # embedded by a cluster worker (toolkit.race.cluster)
            return encoder.embeddings(paths, flip)
        side = " (flip)" if flip else " (+mirrored)" if mirrored_too and encoder.flippable else ""
        embeddings = self.context.embed(encoder, paths, flip_tta=flip, mirrored_too=mirrored_too,
                                        description=f"{run.label} {what}{side}")
        run.embed_seconds += embeddings.seconds
        return embeddings

    def write_submission(self, run: StrategyRun, test: Embeddings, chosen: Recipe) -> None:
        """Rank the test gallery for each query with the chosen recipe; validate; save as the run's
        submission (Ctrl-C held meanwhile: no file that its run, and so its row, does not name)."""
        indices = rank_gallery(test, len(self.data.queries), chosen, RESULTS_PER_QUERY)
        submission = build_submission(self.data.queries, self.data.gallery, indices)
        validate_submission(submission, [path.name for path in self.data.queries], [path.name for path in self.data.gallery])
        with interrupts_deferred():
            run.submission = save_submission(submission, self.config.submissions_dir, run.label)

    # --- ending runs and the race ----------------------------------------------------------------

    def failure(self, run: StrategyRun, error: Exception) -> str:
        """The reason a run failed, told to the observer (with the traceback, unless it is missing weights);
        an error that comes from a Ctrl-C is no run's failure: the press is raised, to stop the race."""
        raise_if_stopped(error)
        if isinstance(error, WeightsUnavailable):
            reason, trace = str(error), None
        else:
            reason, trace = f"{type(error).__name__}: {error}", traceback.format_exc()
        self.observer.failed(run, reason, trace)
        return reason

    def without_weights(self, run: StrategyRun, error: WeightsUnavailable) -> None:
        """Offline without its weights: skipped with the reason, not a failure; weights that do not
        exist under the name given (NoSuchWeights, a wrong option) fail the run; a press, as in failure."""
        raise_if_stopped(error)
        if isinstance(error, NoSuchWeights):
            self.end_run(run, "failed", self.failure(run, error))
        else:
            self.end_run(run, "skipped", str(error))

    def end_run(self, run: StrategyRun, status: str, reason: str = "") -> None:
        run.status, run.reason = status, reason or run.reason
        if run.validation is not None and run.interval is None:
            run.interval = score_interval(run.validation.per_query)
        run.ended = time.monotonic()
        self.observer.ended(run)
        self.record(run)

    def record(self, run: StrategyRun) -> None:
        if id(run) not in self.recorded:
            self.recorder.run_ended(run)
            self.recorded.add(id(run))

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
        result = RaceResult(runs=self.runs, yardstick=self.yardstick, race_id=self.recorder.race_id,
                            budget_seconds=self.budget.seconds, interrupted=self.interrupted)
        with holding_interrupts() as pressed:
            best, note = choose_best(self.runs)
            if best is not None:
                best.chosen = True
                best.notes.extend([note] if note else [])
            try:
                with hard_stop(self.budget.final_end):
                    result.best_submission = self.write_best(best)
                say_kept(result.kept)       # a Ctrl-C after this block, even before our caller sees the result
            except OutOfTime:
                self.observer.note("no time left to copy the best submission; every run's own file is written")
            result.seconds = self.budget.used()
            self.recorder.race_ended(result.seconds, best)
        result.interrupted = result.interrupted or bool(pressed)
        if result.interrupted:
            raise RaceInterrupted(result)
        return result

    def write_best(self, best: StrategyRun | None) -> Path | None:
        if best is None:
            return None
        try:
            return save_submission(load_submission(best.submission), self.config.submissions_dir, "best")
        except (OSError, ValueError) as error:   # a full disk, a file changed under us: the race row still ends
            self.observer.note(f"could not copy the best submission {best.submission}: {error}")
            return None

