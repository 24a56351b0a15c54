"""Shared fixtures: generated competitions, the real mini benchmark, a tiny open_clip model."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from toolkit.data.synthetic import make_synthetic_competition

PROJECT = Path(__file__).resolve().parents[1]
BENCHMARKS = PROJECT.parent / "shared" / "benchmarks"
TINY_CLIP = "RR-Tiny-ViT"


@pytest.fixture(autouse=True)
def isolated_leaderboard(tmp_path, monkeypatch):
    """Every test (and the invoke subprocesses it starts) records into its own leaderboard file,
    never into the project's leaderboard.db."""
    monkeypatch.setenv("RETRIEVAL_RACE_LEADERBOARD", str(tmp_path / "leaderboard.db"))


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Every test (and what it starts) gets Python's own Ctrl-C: a KeyboardInterrupt, SIGINT not
    blocked, whatever the suite was started from. A shell starts a background job (`cmd &`, nohup)
    with SIGINT ignored, and Python then keeps it ignored: a test's own SIGINT would do nothing."""
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="session")
def synthetic_competition(tmp_path_factory) -> Path:
    return make_synthetic_competition(tmp_path_factory.mktemp("synthetic") / "competition")


@pytest.fixture(scope="session")
def training(synthetic_competition):
    """The generated competition's labelled training images."""
    from toolkit.data.dataset import find_competition

    return find_competition(synthetic_competition).training


@pytest.fixture(scope="session")
def mini_benchmark() -> Path:
    path = BENCHMARKS / "lfw-style-mini"
    if not (path / "answers.json").is_file():
        pytest.skip(f"real benchmark not here: {path} (it lives in ../shared/benchmarks beside the repo)")
    return path


@pytest.fixture(scope="session")
def tiny_clip_model(tmp_path_factory) -> str:
    """Registers a tiny open_clip architecture (random weights) and returns its name."""
    import open_clip

    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_CLIP}.json")
    return TINY_CLIP


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread, restored afterwards: on a busy two-core machine OpenMP's spinning
    threads make small convolutions tens of times slower; the numbers do not depend on the count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
