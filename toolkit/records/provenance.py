"""What a race row says about where it ran: the machine, the library versions, the commit, and a
fingerprint of the competition's files (names and sizes; no image is read)."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from toolkit.machine.interrupts import raise_if_stopped

PROJECT = Path(__file__).resolve().parents[2]


def machine_details() -> dict[str, str | None]:
    """Host, CPU and GPU names, torch and open_clip versions, the git commit of the toolkit."""
    return {"host": platform.node() or None, "cpu": _cpu_name(), "gpu": _gpu_name(),
            "torch_version": _version("torch"), "open_clip_version": _version("open_clip_torch"),
            "git_commit": _git_commit()}


def data_fingerprint(data: Any) -> str:
    """A short hash of a competition's file names and sizes (cheap: no image is read)."""
    root = Path(data.root)
    digest = hashlib.sha1()
    for role, paths in (("training", [image.path for image in data.training]),
                        ("query", data.queries), ("gallery", data.gallery)):
        for path in sorted(Path(path) for path in paths):
            try:
                size = path.stat().st_size
            except OSError:
                size = -1
            digest.update(f"{role}\0{_relative(path, root)}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _gpu_name() -> str | None:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as error:  # no torch, or a broken driver: the race row just has no GPU
        raise_if_stopped(error)
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None
