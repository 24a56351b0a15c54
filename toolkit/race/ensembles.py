"""The race's ensemble step: once the strategies are done, the best finished ones fused into a run
of its own (toolkit.retrieval.ensemble), its weights and post-processing chosen on the yardstick,
its validation score cross-fitted, its own submission."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from toolkit.race.evaluation import as_fold
from toolkit.race.runs import RunVectors, StrategyRun
from toolkit.race.selection import ensemble_members, member_names
from toolkit.retrieval.ensemble import ENSEMBLE, build_ensemble, ensemble_label
from toolkit.retrieval.ranking import readable_validation
from toolkit.retrieval.recipes import PLAIN, choose_recipe

if TYPE_CHECKING:
    from toolkit.race.runner import Race


def run_ensemble(race: Race, size: int) -> None:
    """Fuse the `size` best finished strategies; a run of its own (none with fewer than 2)."""
    members = ensemble_members(race.runs, size)
    if len(members) < 2:
        return
    if race.budget.limited and time.monotonic() >= race.budget.ensemble_end:
        race.observer.note("no time left for an ensemble")
        return
    run = StrategyRun(label=ENSEMBLE, strategy=ENSEMBLE, status="fitting", started=time.monotonic())
    race.runs.append(run)
    if race.attempt(run, lambda: fit_ensemble(race, run, members), until=race.budget.ensemble_end,
                    late="still searching weights when the time for ensembles ended"):
        race.end_run(run, "finished")


def fit_ensemble(race: Race, run: StrategyRun, members: list[StrategyRun]) -> None:
    """Search the weights on the yardstick, choose post-processing for the fused vectors, write
    the submission. Each member contributes the embeddings of the flip setting it chose."""
    budget, folds = race.budget, race.yardstick.folds
    search_deadline = None if not budget.limited else (time.monotonic() + budget.ensemble_end) / 2
    recipes = None if race.config.post_process else [PLAIN]
    ensemble = build_ensemble([member.vectors.validation for member in members],
                              [member.vectors.test for member in members],
                              readable=lambda embeddings, fold: as_fold(readable_validation(embeddings, folds[fold])),
                              deadline=search_deadline, recipes=recipes)
    kept = [members[position] for position in ensemble.members]
    run.label = ensemble_label(member_names(kept), ensemble.weights)
    run.options = {"members": [member.label for member in kept], "weights": ensemble.weights,
                   "flip": [member.flip_tta for member in kept]}
    run.fit_seconds = run.seconds
    choice = choose_recipe([as_fold(readable_validation(embeddings, fold))
                            for embeddings, fold in zip(ensemble.validation, folds)], recipes)
    run.post_processing, run.baseline = choice.best, choice.baseline
    run.validation = ensemble.cross_fitted or choice.best_score
    run.notes.append(ensemble.describe(in_sample=choice.best_score))
    run.details["in_sample_validation"] = choice.best_score.score    # what its kept validation rankings score
    flips = {member.flip_tta for member in kept}
    run.flip_tta = flips.pop() if len(flips) == 1 else None
    run.vectors = RunVectors(validation=ensemble.validation, test=ensemble.test)
    race.write_submission(run, ensemble.test, run.post_processing)
