"""Pre-fetch the weights that strategies need, so that a race runs with the network off.

    for result in prefetch_weights(parse_strategy_specs("clip-zs,cnn-zs[backbone=resnet50]"), create_strategy):
        print(result.line())

Each strategy loads its weights through its own code (`fit([])`: open_clip, torchvision and timm
put them into their usual caches), so no URL is written twice. A strategy whose weights_status()
says they are on disk already is not loaded. What a download added is found by comparing the
weight caches (Hugging Face hub, torch hub checkpoints, ~/.cache/clip) before and after.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from toolkit.machine.console import human_size
from toolkit.machine.interrupts import raise_if_stopped
from toolkit.models.weights import hugging_face_cache_dir

__all__ = ["PrefetchResult", "prefetch_weights", "weight_cache_dirs"]


def weight_cache_dirs() -> list[Path]:
    """The folders where strategies' weights are downloaded to."""
    return [Path(hugging_face_cache_dir()), Path(torch.hub.get_dir()) / "checkpoints",
            Path("~/.cache/clip").expanduser()]


def _files(folders: list[Path]) -> dict[Path, int]:
    """Regular files (symbolic links not followed) under *folders*, with their sizes."""
    found: dict[Path, int] = {}
    for folder in folders:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not path.is_symlink() and not name.endswith((".lock", ".incomplete")):
                    found[path] = info.st_size
    return found


def _where(path: Path, folders: list[Path]) -> Path:
    """The cache entry a new file belongs to: its first folder below the cache root."""
    for folder in folders:
        try:
            relative = path.relative_to(folder)
        except ValueError:
            continue
        return folder / relative.parts[0] if len(relative.parts) > 1 else folder
    return path.parent


@dataclass
class PrefetchResult:
    label: str                                     # the strategy as typed, e.g. clip-zs[model=ViT-B-16]
    ok: bool
    already: bool = False                          # weights were on disk before; nothing loaded
    detail: str = ""                               # where the weights are, or why it failed
    downloaded: dict[Path, int] = field(default_factory=dict)   # cache entry -> bytes added
    seconds: float = 0.0

    @property
    def downloaded_bytes(self) -> int:
        return sum(self.downloaded.values())

    def line(self) -> str:
        if not self.ok:
            return f"{self.label}: FAILED: {self.detail}"
        if self.already:
            return f"{self.label}: already available offline ({self.detail})"
        if self.downloaded:
            places = ", ".join(f"{human_size(size)} into {place}" for place, size in sorted(self.downloaded.items()))
            return f"{self.label}: downloaded {places} in {self.seconds:.0f} s"
        return f"{self.label}: loaded, nothing new downloaded ({self.detail})"


def _label(name: str, options: dict[str, Any]) -> str:
    """The strategy as a user types it (Strategy.describe() once it exists)."""
    inner = ",".join(f"{key}={value}" for key, value in sorted(options.items()))
    return f"{name}[{inner}]" if inner else name


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def prefetch_weights(specs: list[tuple[str, dict[str, Any]]], make_strategy: Callable[..., Any],
                     announce: Callable[[str], None] | None = None,
                     cache_dirs: list[Path] | None = None) -> Iterator[PrefetchResult]:
    """For each (name, options): the weights fetched into their caches, one PrefetchResult each.
    `make_strategy(name, **options)` creates the strategy (strategies.create_strategy).

    *announce(label)* is called before a strategy that needs a download is loaded (so a caller can
    say what the wait is for). Never raises for a strategy's failure; the result says why.
    """
    folders = cache_dirs if cache_dirs is not None else weight_cache_dirs()
    for name, options in specs:
        started = time.perf_counter()
        label = _label(name, options)
        try:
            strategy = make_strategy(name, **options)
            label = strategy.describe()
            status = strategy.weights_status()
            if status.available_offline:
                yield PrefetchResult(label, ok=True, already=True, detail=status.detail,
                                     seconds=time.perf_counter() - started)
                continue
            if announce is not None:
                announce(label)
            before = _files(folders)
            strategy.fit([])                     # the strategy's own loading code downloads
            added: dict[Path, int] = {}
            for path, size in _files(folders).items():
                if before.get(path) != size:
                    place = _where(path, folders)
                    added[place] = added.get(place, 0) + size
            after = strategy.weights_status()
            detail = after.detail if after.available_offline else f"loaded, but still not offline: {after.detail}"
            yield PrefetchResult(label, ok=after.available_offline, detail=detail, downloaded=added,
                                 seconds=time.perf_counter() - started)
        except Exception as error:               # one line per strategy, never a traceback
            raise_if_stopped(error)
            detail = _first_line(error)
            yield PrefetchResult(label, ok=False, detail=detail.removeprefix(f"{name}: "),
                                 seconds=time.perf_counter() - started)
