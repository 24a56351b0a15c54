"""What this machine can do: the checks behind `invoke doctor`, returned as plain data.

    report = run_doctor(data_root=Path("data"))
    console.print(doctor_table(report))          # toolkit.views.doctor

It checks Python and torch, the GPU (or its absence), CPU cores and RAM, which strategies have
their weights on disk (weights_status(): nothing is downloaded), free disk, the competitions under
the data folder, and whether the configured competition server answers (one request, a few
seconds at most). Nothing here raises for a failed check: the report says what failed.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolkit.machine.interrupts import raise_if_stopped
from toolkit.models.weights import hugging_face_cache_dir

__all__ = ["COMMON_EXTRA_SPECS", "DoctorReport", "run_doctor"]

#: Checked beside each registered strategy's defaults: the open_clip pairs worth having on the day.
COMMON_EXTRA_SPECS = "clip-zs[model=ViT-B-16,pretrained=laion2b_s34b_b88k],clip-zs[model=ViT-L-14,pretrained=openai]"
SERVER_TIMEOUT_S = 3.0


@dataclass
class Gpu:
    name: str
    memory_bytes: int


@dataclass
class StrategyCheck:
    label: str
    available: bool
    detail: str


@dataclass
class CompetitionCheck:
    folder: Path
    description: str | None          # describe() of the layout, or None when it is unusable
    problem: str | None = None       # the LayoutError, in one line
    downloaded_from: str | None = None


@dataclass
class ServerCheck:
    url: str | None
    state: str                       # "answers", "no answer", "not configured" or "settings error"
    detail: str

    @property
    def answers(self) -> bool:
        return self.state == "answers"


@dataclass
class DoctorReport:
    python: str
    python_executable: str
    torch: str
    torch_build: str                 # "CUDA 12.1" or "CPU-only build"
    gpus: list[Gpu]
    gpu_note: str                    # why there is no GPU, when there is none
    cpu_cores: int
    usable_cores: int
    architecture: str                # platform.machine(): x86_64, arm64
    ram_total: int | None
    ram_available: int | None
    disks: list[tuple[Path, int, int]]          # (folder, free bytes, total bytes)
    strategies: list[StrategyCheck]
    data_root: Path
    data_root_exists: bool
    competitions: list[CompetitionCheck]
    partial_downloads: list[tuple[Path, int]]   # *.part files under the data folder
    server: ServerCheck
    seconds: float = 0.0


# ---------------------------------------------------------------- the machine

def _memory() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes, from /proc/meminfo, else sysconf."""
    try:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values.get("MemTotal"), values.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (ValueError, OSError, AttributeError):
        return None, None


def _gpus() -> tuple[str, str, list[Gpu], str]:
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    if torch.cuda.is_available():
        gpus = [Gpu(torch.cuda.get_device_properties(index).name, torch.cuda.get_device_properties(index).total_memory)
                for index in range(torch.cuda.device_count())]
        return torch.__version__, build, gpus, ""
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.__version__, build, [Gpu("Apple MPS (not used by the strategies)", 0)], ""
    if torch.version.cuda:
        note = f"torch is built for CUDA {torch.version.cuda}, but no GPU or driver is visible; strategies run on the CPU"
    else:
        note = "torch is a CPU-only build; strategies run on the CPU"
    return torch.__version__, build, [], note


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disks(folders: list[Path]) -> list[tuple[Path, int, int]]:
    """Free and total bytes for each folder's file system, each file system once."""
    seen, disks = set(), []
    for folder in folders:
        existing = _existing(folder)
        try:
            device = existing.stat().st_dev
            usage = shutil.disk_usage(existing)
        except OSError:
            continue
        if device not in seen:
            seen.add(device)
            disks.append((folder, usage.free, usage.total))
    return disks


# ---------------------------------------------------------------- strategies, data, server

def check_strategies(specs: list[tuple[str, dict[str, Any]]], make_strategy: Callable[..., Any]) -> list[StrategyCheck]:
    """Whether each strategy's weights are on disk; `make_strategy(name, **options)` creates one
    (strategies.create_strategy)."""
    checks = []
    for name, options in specs:
        label = name
        try:
            strategy = make_strategy(name, **options)
            label = strategy.describe()
            status = strategy.weights_status()
            checks.append(StrategyCheck(label, status.available_offline, status.detail))
        except Exception as error:                     # a bad option or a broken install: say so
            raise_if_stopped(error)
            checks.append(StrategyCheck(label, False, " ".join(str(error).split())[:300]))
    return checks


def check_data(data_root: Path) -> tuple[list[CompetitionCheck], list[tuple[Path, int]]]:
    """The competitions under *data_root* (or *data_root* itself), and interrupted downloads."""
    from toolkit.data.dataset import TRAINING_FOLDER_NAMES, LayoutError, describe, find_competition
    from toolkit.data.unpack import read_marker

    if not data_root.is_dir():
        return [], []
    children = sorted(entry for entry in data_root.iterdir()
                      if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX")
    layout_names = {*TRAINING_FOLDER_NAMES, "test"}
    folders = [data_root] if any(child.name.lower() in layout_names for child in children) else children
    checks = []
    for folder in folders:
        marker = read_marker(folder)
        downloaded_from = marker.get("url") if marker else None
        try:
            checks.append(CompetitionCheck(folder, describe(find_competition(folder)), None, downloaded_from))
        except LayoutError as error:
            checks.append(CompetitionCheck(folder, None, str(error).splitlines()[0][:200], downloaded_from))
    partial = [(path, path.stat().st_size) for path in sorted(data_root.glob("*.part")) if path.is_file()]
    return checks, partial


def check_server(url: str | None, timeout: float = SERVER_TIMEOUT_S) -> ServerCheck:
    """One GET to the server URL: any HTTP answer counts (the endpoint itself wants a POST)."""
    import requests

    from toolkit.data.download import describe_connection_error

    if not url:
        return ServerCheck(None, "not configured", "set server_url in retrieval-race.toml or RETRIEVAL_RACE_URL")
    started = time.perf_counter()
    try:
        response = requests.get(url, timeout=timeout, allow_redirects=False)
        response.close()
    except requests.exceptions.Timeout:
        return ServerCheck(url, "no answer", f"no answer within {timeout:.0f} s (only reachable from the university network?)")
    except requests.exceptions.RequestException as error:
        return ServerCheck(url, "no answer", f"{describe_connection_error(error)}")
    return ServerCheck(url, "answers", f"HTTP {response.status_code}, {1000 * (time.perf_counter() - started):.0f} ms")


def _server_from_settings(project: Path | None, timeout: float) -> ServerCheck:
    from toolkit.machine.settings import SettingsError, load_settings

    try:
        settings = load_settings(project)
    except SettingsError as error:
        return ServerCheck(None, "settings error", str(error))
    return check_server(settings.server_url, timeout)


# ---------------------------------------------------------------- the report

def run_doctor(data_root: str | os.PathLike, specs: list[tuple[str, dict[str, Any]]], make_strategy: Callable[..., Any],
               project: Path | None = None, server_timeout: float = SERVER_TIMEOUT_S) -> DoctorReport:
    """Check this machine (see the module docstring) and the strategies of `specs`, created by
    `make_strategy`; never downloads, never raises for a failed check."""
    started = time.perf_counter()
    data_root = Path(data_root)
    torch_version, build, gpus, gpu_note = _gpus()
    total, available = _memory()
    competitions, partial = check_data(data_root)
    report = DoctorReport(
        python=platform.python_version(), python_executable=sys.executable, torch=torch_version, torch_build=build,
        gpus=gpus, gpu_note=gpu_note, cpu_cores=os.cpu_count() or 1, usable_cores=_usable_cores(),
        architecture=platform.machine(), ram_total=total, ram_available=available,
        disks=_disks([data_root, Path(hugging_face_cache_dir())]),
        strategies=check_strategies(specs, make_strategy),
        data_root=data_root, data_root_exists=data_root.is_dir(), competitions=competitions, partial_downloads=partial,
        server=_server_from_settings(project, server_timeout))
    report.seconds = time.perf_counter() - started
    return report
