"""The shared training loop of trained strategies: batches, schedule, deadline, best checkpoint.

    seed_everything(0)
    sampler = IdentityBatchSampler(labels, identities_per_batch=32, images_per_identity=4, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = train_until(model, step_fn, sampler, optimizer, max_steps=2000, deadline=deadline,
                         evaluate=lambda: validation_score(...), evaluate_every=50,
                         scheduler=warmup_cosine(optimizer, 100, 2000))

`step_fn(batch) -> loss` is the strategy's own forward pass; the loop does the rest (backward,
optimizer and scheduler steps, float16 autocast with a GradScaler on CUDA). It stops at the
deadline (checked before every step and every evaluation) or after max_steps, whichever comes
first, and leaves the model holding its best evaluated weights.
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from toolkit.machine.interrupts import worker_batches
from toolkit.retrieval.metrics import score_rankings
from toolkit.retrieval.search import top_k


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class IdentityBatchSampler:
    """P x K batches of row indices, drawn by pytorch-metric-learning's MPerClassSampler: in each
    batch `identities_per_batch` distinct identities (P, drawn afresh for every batch; capped at the
    number of identities), `images_per_identity` rows of each (K; without replacement when the
    identity has that many, with replacement otherwise).

    An INFINITE iterator of lists (wrap it in itertools.islice, or let train_until's max_steps stop
    it), usable as a DataLoader batch_sampler. Seeded: one seed, one sequence of batches. The
    wrapper exists because the library's sampler yields a flat, finite index list and draws from
    its module-level NumPy generator: here each draw uses this sampler's own RandomState instead.
    """

    DRAW_BATCHES = 64       # batches the library draws at a time

    def __init__(self, labels: Sequence, identities_per_batch: int = 32, images_per_identity: int = 4,
                 seed: int = 0):
        if identities_per_batch < 1 or images_per_identity < 1:
            raise ValueError("identities_per_batch and images_per_identity must be at least 1")
        self.labels = _as_list(labels)
        if not self.labels:
            raise ValueError("IdentityBatchSampler needs at least one labelled row")
        self.identities_per_batch = min(identities_per_batch, len(set(self.labels)))
        self.images_per_identity = images_per_identity
        self.seed = seed

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.images_per_identity

    def __iter__(self) -> Iterator[list[int]]:
        from pytorch_metric_learning.samplers import MPerClassSampler
        from pytorch_metric_learning.utils import common_functions

        generator = np.random.RandomState(self.seed % (2 ** 32))
        size = self.batch_size
        sampler = MPerClassSampler(self.labels, m=self.images_per_identity, batch_size=size,
                                   length_before_new_iter=size * self.DRAW_BATCHES)
        while True:
            library_generator, common_functions.NUMPY_RANDOM = common_functions.NUMPY_RANDOM, generator
            try:
                rows = [int(row) for row in sampler]
            finally:
                common_functions.NUMPY_RANDOM = library_generator
            for start in range(0, len(rows), size):
                yield rows[start:start + size]


def _as_list(labels: Sequence) -> list:
    if isinstance(labels, torch.Tensor):
        return labels.tolist()
    if isinstance(labels, np.ndarray):
        return labels.tolist()
    return list(labels)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup_steps to lr over `warmup_steps`, then a cosine decay to 0 at
    `total_steps` (and 0 after it)."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainingResult:
    best_score: float | None                  # best evaluate() value; None when never evaluated
    best_step: int                            # the step whose weights the model holds at the end
    steps: int                                # optimizer steps taken
    stopped_by: str                           # "deadline" or "steps"
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, score) per evaluation


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


class _Stepper:
    """One optimisation step: step_fn under autocast on CUDA, scaled backward, optimizer step."""

    def __init__(self, model: nn.Module, step_fn: Callable[[Any], torch.Tensor],
                 optimizer: torch.optim.Optimizer, scheduler=None):
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = _model_device(model)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def __call__(self, batch: Any) -> float:
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = self.step_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return float(loss.detach())


class _Batches:
    """Endless batches from any iterable: an infinite sampler, or a finite one restarted. A
    DataLoader is iterated through worker_batches, so its workers ignore Ctrl-C and are stopped at
    once when training ends early (a deadline, an error, Ctrl-C): close() when done."""

    def __init__(self, batches: Iterable):
        self.batches = batches
        self._workers = contextlib.ExitStack()
        self.iterator = self._start()

    def _start(self) -> Iterator:
        self.close()
        if isinstance(self.batches, DataLoader):
            return self._workers.enter_context(worker_batches(self.batches))
        return iter(self.batches)

    def next(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = self._start()
            try:
                return next(self.iterator)
            except StopIteration:
                raise ValueError("train_until got no batches: the batch iterable is empty") from None

    def close(self) -> None:
        self._workers.close()
        self._workers = contextlib.ExitStack()


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def train_until(model: nn.Module, step_fn: Callable[[Any], torch.Tensor], batches: Iterable,
                optimizer: torch.optim.Optimizer, *, max_steps: int, deadline: float | None = None,
                evaluate: Callable[[], float] | None = None, evaluate_every: int = 50,
                scheduler=None, evaluate_at_start: bool = False) -> TrainingResult:
    """Train until `deadline` (a time.monotonic() value, checked before each step) or `max_steps`.

    `evaluate() -> float` (higher is better), when given, runs with the model in eval mode every
    `evaluate_every` steps, at the end, and before the first step when `evaluate_at_start` (so the
    untrained weights compete too); an evaluation that would start after the deadline is skipped.
    The best evaluated weights (a CPU copy of the state_dict) are loaded back at the end.
    """
    started = time.monotonic()
    stepper = _Stepper(model, step_fn, optimizer, scheduler)
    source = _Batches(batches)
    history: list[tuple[int, float]] = []
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_step = 0
    steps = 0
    stopped_by = "steps"

    def run_evaluation() -> None:
        nonlocal best_score, best_state, best_step
        if _past(deadline):
            return
        was_training = model.training
        model.eval()
        try:
            score = float(evaluate())
        finally:
            model.train(was_training)
        history.append((steps, score))
        if best_score is None or score > best_score:
            best_score, best_step, best_state = score, steps, _cpu_state(model)

    model.train()
    if evaluate is not None and evaluate_at_start:
        run_evaluation()
    try:
        while steps < max_steps:
            if _past(deadline):
                stopped_by = "deadline"
                break
            stepper(source.next())
            steps += 1
            if evaluate is not None and evaluate_every > 0 and steps % evaluate_every == 0:
                run_evaluation()
    finally:        # the loader's workers stopped now, not after torch's 5 s wait for each
        source.close()
    if evaluate is not None and (not history or history[-1][0] != steps):
        run_evaluation()
    model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = steps
    return TrainingResult(best_score=best_score, best_step=best_step, steps=steps, stopped_by=stopped_by,
                          seconds=time.monotonic() - started, history=history)


def seconds_per_step(model: nn.Module, step_fn: Callable[[Any], torch.Tensor], batches: Iterable,
                     optimizer: torch.optim.Optimizer, steps: int = 2) -> float:
    """Wall-clock seconds of one training step, from a short probe of `steps` steps (the first
    one, which pays for lazy initialisation, is left out of the mean when there are two or more).
    The model's weights and mode and the optimizer's state are restored afterwards."""
    steps = max(1, int(steps))
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    stepper = _Stepper(model, step_fn, optimizer)
    source = _Batches(batches)
    durations = []
    model.train()
    try:
        for _ in range(steps):
            begun = time.perf_counter()
            stepper(source.next())
            if stepper.device.type == "cuda":
                torch.cuda.synchronize(stepper.device)
            durations.append(time.perf_counter() - begun)
    finally:
        source.close()
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    timed = durations[1:] if len(durations) > 1 else durations
    return float(sum(timed) / len(timed))


def validation_score(query_vectors: np.ndarray, gallery_vectors: np.ndarray,
                     query_labels: Sequence, gallery_labels: Sequence) -> float:
    """The competition score (600*Top1 + 300*Top5 + 100*Top10) of cosine retrieval."""
    _, indices = top_k(query_vectors, gallery_vectors, 10)
    gallery_labels = list(gallery_labels)
    ranked = [[gallery_labels[index] for index in row if index >= 0] for row in indices]
    return score_rankings(ranked, list(query_labels), gallery_labels).score
