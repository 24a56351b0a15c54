"""invoke doctor and invoke prefetch: what the machine can do, and weights fetched ahead of the race."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import strategies
from strategies import create_strategy
from strategies.base import Strategy, WeightsStatus, WeightsUnavailable
from tests.archive_server import ArchiveServer
from tests.conftest import PROJECT
from toolkit.machine.doctor import check_server, run_doctor
from toolkit.machine.prefetch import prefetch_weights


def invoke(*arguments, cwd=PROJECT, environment=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(PROJECT), *arguments],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "250", **(environment or {})})


def rows(output: str) -> dict[str, str]:
    """Table rows by their first cell."""
    return {line.split("│")[1].strip(): line for line in output.splitlines() if line.startswith("│")}


def test_doctor_tells_what_this_machine_can_do(tmp_path, synthetic_competition):
    data = tmp_path / "data"
    data.mkdir()
    (data / "comp").symlink_to(synthetic_competition, target_is_directory=True)
    (data / "broken" / "training").mkdir(parents=True)
    (data / "next.part").write_bytes(b"x" * 1000)
    result = invoke("doctor", "--data", str(data), cwd=tmp_path,
                    environment={"RETRIEVAL_RACE_CONFIG": str(tmp_path / "none.toml"), "RETRIEVAL_RACE_URL": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    table = rows(result.stdout)
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in table["GPU"]
    else:
        assert "no GPU" in table["GPU"]
    assert f"{os.cpu_count()} cores" in table["CPU"] and "RAM" in table and "free" in table["disk"]
    for name in ("face-zs", "cnn-zs"):
        assert "available" in table[name] and "not available" not in table[name]
    clip_rows = [line for label, line in table.items() if label.startswith("clip-zs")]
    assert len(clip_rows) >= 2
    for line in clip_rows:
        label = line.split("│")[1].strip()
        model, pretrained = (label[len("clip-zs["):-1].replace("model=", "").replace("pretrained=", "").split(","))
        if not create_strategy("clip-zs", model=model, pretrained=pretrained).weights_status().available_offline:
            assert "not available" in line and "not cached" in line
    assert "ready" in table["comp"] and "identities" in table["comp"]
    assert "layout problem" in table["broken"]
    assert "interrupted download" in table["next.part"]
    assert "not configured" in table["server_url"]
    assert "Traceback" not in result.stdout + result.stderr


class Watched:
    """A strategy that notes what is asked of it."""

    def __init__(self, strategy, asked: list):
        self.strategy, self.asked = strategy, asked

    def __getattr__(self, name):
        self.asked.append(name)
        return getattr(self.strategy, name)


def test_doctor_only_asks_whether_weights_are_on_disk_it_loads_and_fetches_nothing(tmp_path, monkeypatch):
    """Doctor answers in seconds because of what it does not do: no model is built (fit), no probe is
    timed (estimate), nothing is downloaded; a strategy is only asked to describe itself and where
    its weights are."""
    monkeypatch.setenv("RETRIEVAL_RACE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("RETRIEVAL_RACE_URL", "")
    asked: list[str] = []
    specs = [(name, {}) for name in strategies.strategy_names()]
    report = run_doctor(tmp_path / "no-data", specs, lambda name, **options: Watched(create_strategy(name, **options),
                                                                                     asked), project=tmp_path)
    assert len(report.strategies) == len(specs) and set(asked) == {"describe", "weights_status"}
    assert report.server.state == "not configured"


def test_doctor_report_checks_the_server_with_a_short_request(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_RACE_CONFIG", str(tmp_path / "none.toml"))
    with ArchiveServer() as server:
        monkeypatch.setenv("RETRIEVAL_RACE_URL", server.url("/retrieval/"))
        report = run_doctor(tmp_path / "no-data", [("face-zs", {})], create_strategy, project=tmp_path)
    assert report.server.answers and "HTTP 404" in report.server.detail
    assert report.competitions == [] and [check.label for check in report.strategies] == ["face-zs"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = check_server(f"http://127.0.0.1:{port}/retrieval/", timeout=1.0)
    assert refused.state == "no answer" and "connection refused" in refused.detail


class FakeDownloads(Strategy):
    """A strategy whose 'download' writes a weights file into a cache folder (or fails)."""

    name = "fake-downloads"
    summary = "test double"
    cache: Path

    def weights_status(self) -> WeightsStatus:
        weights = self.weights()
        return WeightsStatus(weights.is_file(), f"cached at {weights}" if weights.is_file() else "not cached")

    def weights(self) -> Path:
        return self.cache / f"models--fake--{'offline' if self.options.get('offline') else 'net'}" / "blobs" / "0123"

    def fit(self, training, context=None, deadline=None):
        if self.options.get("offline"):
            raise WeightsUnavailable("fake-downloads: cannot reach the weights host")
        weights = self.weights()
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"w" * 2_500_000)
        return None


def test_prefetch_downloads_through_the_strategy_then_knows_it_is_there(tmp_path, monkeypatch):
    monkeypatch.setitem(strategies._REGISTRY, FakeDownloads.name, FakeDownloads)
    monkeypatch.setattr(FakeDownloads, "cache", tmp_path / "hub", raising=False)
    announced = []
    first, failed = prefetch_weights([("fake-downloads", {}), ("fake-downloads", {"offline": True})], create_strategy,
                                     announce=announced.append, cache_dirs=[tmp_path / "hub"])
    assert first.ok and not first.already and first.downloaded == {tmp_path / "hub" / "models--fake--net": 2_500_000}
    assert "downloaded 2.5 MB into" in first.line() and "models--fake--net" in first.line()
    assert not failed.ok and failed.line() == "fake-downloads[offline=True]: FAILED: cannot reach the weights host"
    assert announced == ["fake-downloads", "fake-downloads[offline=True]"]
    [again] = prefetch_weights([("fake-downloads", {})], create_strategy, cache_dirs=[tmp_path / "hub"])
    assert again.already and "already available offline" in again.line()


def test_invoke_prefetch_says_what_is_offline_and_fails_clearly_without_network():
    from strategies.base import host_reachable

    arguments = "face-zs,cnn-zs"
    expect_failure = not host_reachable("https://download.pytorch.org", timeout=2.0) and \
        not create_strategy("cnn-zs", backbone="resnet18").weights_status().available_offline
    if expect_failure:
        arguments += ",cnn-zs[backbone=resnet18]"
    result = invoke("prefetch", "--strategies", arguments)
    lines = result.stdout.splitlines()
    assert any(line.startswith("face-zs: already available offline") for line in lines)
    assert any(line.startswith("cnn-zs: already available offline") for line in lines)
    assert "Traceback" not in result.stdout + result.stderr
    if expect_failure:
        assert result.returncode == 1
        [failure] = [line for line in lines if "FAILED" in line]
        assert failure.startswith("cnn-zs[backbone=resnet18]: FAILED:") and "unreachable" in failure
    else:
        assert result.returncode == 0
