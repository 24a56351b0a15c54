"""toolkit/training.py: deadline, best checkpoint, P x K sampler, warm-up schedule, seeding."""
from __future__ import annotations

import itertools
import time
from collections import Counter

import numpy as np
import pytest
import torch

from toolkit.training.loop import (IdentityBatchSampler, TrainingResult, seconds_per_step, seed_everything,
                              train_until, validation_score, warmup_cosine)


def tiny_problem(seed: int = 0):
    seed_everything(seed)
    model = torch.nn.Linear(4, 1)
    inputs = torch.randn(64, 4)
    targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    batches = (torch.randint(0, 64, (8,)) for _ in itertools.count())

    def step_fn(rows):
        return torch.nn.functional.mse_loss(model(inputs[rows]), targets[rows])

    return model, step_fn, batches


def test_stops_at_its_deadline():
    model, step_fn, batches = tiny_problem()
    step_seconds = 0.1

    started_at = []

    def slow_step(rows):
        started_at.append(time.monotonic())
        time.sleep(step_seconds)
        return step_fn(rows)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + 0.5
    result = train_until(model, slow_step, batches, optimizer, max_steps=1000, deadline=deadline)
    assert isinstance(result, TrainingResult)
    assert result.stopped_by == "deadline" and result.steps == len(started_at) >= 1
    assert all(started < deadline for started in started_at)     # no step begun once the deadline passed


def test_evaluation_after_the_deadline_is_skipped():
    model, step_fn, batches = tiny_problem()
    calls = []

    def evaluate():
        calls.append(time.monotonic())
        return 0.0

    deadline = time.monotonic() + 0.2
    result = train_until(model, lambda rows: (time.sleep(0.05), step_fn(rows))[1], batches,
                         torch.optim.SGD(model.parameters(), lr=0.01), max_steps=1000,
                         deadline=deadline, evaluate=evaluate, evaluate_every=2)
    assert result.stopped_by == "deadline"
    assert calls and all(moment < deadline for moment in calls)


def test_stops_after_max_steps_and_restores_the_best_checkpoint():
    model, step_fn, batches = tiny_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    snapshots = {}
    step = {"count": 0}

    def counting_step(rows):
        step["count"] += 1
        return step_fn(rows)

    def evaluate():  # peaks at step 20, then worse
        at = step["count"]
        snapshots[at] = {key: value.clone() for key, value in model.state_dict().items()}
        return -abs(at - 20)

    result = train_until(model, counting_step, batches, optimizer, max_steps=55, evaluate=evaluate,
                         evaluate_every=10)
    assert result.stopped_by == "steps" and result.steps == 55
    assert [at for at, _ in result.history] == [10, 20, 30, 40, 50, 55]
    assert result.best_step == 20 and result.best_score == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[20][key])
    assert not torch.equal(snapshots[20]["weight"], snapshots[55]["weight"])


def test_evaluate_at_start_lets_the_untrained_weights_win():
    model, step_fn, batches = tiny_problem()
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    scores = iter([1.0, 0.5, 0.2, 0.1])
    result = train_until(model, step_fn, batches, torch.optim.SGD(model.parameters(), lr=0.05),
                         max_steps=15, evaluate=lambda: next(scores), evaluate_every=5,
                         evaluate_at_start=True)
    assert result.best_step == 0 and [at for at, _ in result.history] == [0, 5, 10, 15]
    assert all(torch.equal(value, initial[key]) for key, value in model.state_dict().items())


def test_training_reduces_the_loss_with_a_scheduler():
    model, step_fn, batches = tiny_problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    rows = torch.arange(64)
    before = step_fn(rows).item()
    result = train_until(model, step_fn, batches, optimizer, max_steps=300,
                         scheduler=warmup_cosine(optimizer, 10, 300))
    assert result.best_score is None and result.best_step == 300
    assert step_fn(rows).item() < 0.01 * before


def test_finite_batches_are_restarted():
    model, step_fn, _ = tiny_problem()
    result = train_until(model, step_fn, [torch.arange(8), torch.arange(8, 16)],
                         torch.optim.SGD(model.parameters(), lr=0.01), max_steps=5)
    assert result.steps == 5


def test_sampler_gives_p_by_k_batches():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"] * 1 + ["e"] * 7
    sampler = IdentityBatchSampler(labels, identities_per_batch=3, images_per_identity=4, seed=1)
    assert sampler.batch_size == 12
    batches_with = Counter()
    batches = list(itertools.islice(sampler, 200))     # past the library's draw of 64 batches
    for batch in batches:
        assert len(batch) == 12 and all(isinstance(row, int) for row in batch)
        counts = Counter(labels[row] for row in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}   # P identities x K images
        for identity in counts:
            rows = [row for row in batch if labels[row] == identity]
            assert all(labels[row] == identity for row in rows)
            if labels.count(identity) >= 4:
                assert len(set(rows)) == 4  # without replacement when there are enough
        batches_with.update(counts.keys())
    # identities are drawn afresh for every batch: each is in about 3 of 5 batches
    assert set(batches_with) == set(labels)
    assert all(0.45 * len(batches) < count < 0.75 * len(batches) for count in batches_with.values())


def test_sampler_feeds_a_data_loader():
    labels = [0] * 6 + [1] * 6 + [2] * 6
    loader = torch.utils.data.DataLoader(torch.arange(18), batch_sampler=IdentityBatchSampler(labels, 2, 3, seed=0))
    batch = next(iter(loader))
    assert batch.shape == (6,) and len({labels[row] for row in batch.tolist()}) == 2


def test_sampler_is_reproducible_and_caps_p():
    labels = np.repeat(np.arange(5), 3)
    first = list(itertools.islice(IdentityBatchSampler(labels, 8, 2, seed=3), 5))
    again = list(itertools.islice(IdentityBatchSampler(labels, 8, 2, seed=3), 5))
    other = list(itertools.islice(IdentityBatchSampler(labels, 8, 2, seed=4), 5))
    assert first == again and first != other
    assert all(len(batch) == 10 for batch in first)


def test_warmup_then_cosine_decay():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=5, total_steps=25)
    rates = []
    for _ in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert rates[5] == pytest.approx(1.0)
    assert all(later < earlier for earlier, later in zip(rates[5:25], rates[6:25]))
    assert rates[15] == pytest.approx(0.5)
    assert rates[25:] == pytest.approx([0.0] * 5)


def test_same_seed_same_weights():
    def trained(seed):
        model, step_fn, batches = tiny_problem(seed)
        train_until(model, step_fn, batches, torch.optim.SGD(model.parameters(), lr=0.05), max_steps=20)
        return model.weight.detach().clone()

    assert torch.equal(trained(0), trained(0))
    assert not torch.equal(trained(0), trained(1))


def test_seconds_per_step_probe_restores_state():
    model, step_fn, batches = tiny_problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    seconds = seconds_per_step(model, lambda rows: (time.sleep(0.02), step_fn(rows))[1], batches, optimizer,
                               steps=3)
    assert seconds >= 0.02                              # each probed step sleeps 0.02 s: measured, not guessed
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}


def test_validation_score_is_the_competition_score():
    gallery = np.eye(12, dtype=np.float32)
    gallery_labels = list(range(12))
    queries = gallery[[0, 1, 2]].copy()
    assert validation_score(queries, gallery, [0, 1, 2], gallery_labels) == pytest.approx(1000.0)
    # identity 5's vector for a query of identity 0: not within the top 1, but within the top 5
    queries = np.array([0.9 * gallery[5] + 0.1 * gallery[0]], dtype=np.float32)
    assert validation_score(queries, gallery, [0], gallery_labels) == pytest.approx(400.0)


def test_a_loader_s_workers_are_stopped_when_training_ends_early():
    """train_until over a DataLoader with workers (an endless identity sampler): when a step raises
    (here a Ctrl-C), the workers are gone already while the exception is still being handled,
    not left to torch's shutdown once the traceback is dropped; after a normal end too."""
    import multiprocessing

    labels = [index // 4 for index in range(32)]
    model = torch.nn.Linear(1, 1)
    loader = torch.utils.data.DataLoader(torch.arange(32, dtype=torch.float32)[:, None], num_workers=2,
                                         batch_sampler=IdentityBatchSampler(labels, 2, 2, seed=0))
    calls = []

    def step_fn(rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return model(rows).pow(2).mean()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(KeyboardInterrupt):
        try:
            train_until(model, step_fn, loader, optimizer, max_steps=100)
        except KeyboardInterrupt:
            assert multiprocessing.active_children() == [], "the loader's workers outlived the training loop"
            raise
    result = train_until(model, lambda rows: model(rows).pow(2).mean(), loader, optimizer, max_steps=4)
    assert result.steps == 4 and multiprocessing.active_children() == []
