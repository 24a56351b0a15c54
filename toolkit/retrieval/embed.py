"""Batched embedding extraction with an on-disk cache.

Decoding and preprocessing run in DataLoader worker processes, overlapped with the model in the
main process; the model runs under inference_mode (and autocast on CUDA, inside the Encoder).
Optional flip test-time augmentation averages each image's embedding with its mirror's; the
plain half comes from the cache when the plain pass has run.
A DerivedEncoder (e.g. an adapter) is served from its base's embeddings.

The cache is keyed by (encoder fingerprint [+ ":flip"], file content hash), so a renamed or moved
file is still a hit and an edited file is not; a second run over the same images re-embeds
nothing. Unreadable files are embedded as a grey placeholder (a query must still be answered),
reported by name, and never cached. What was computed before a Ctrl-C (or the end of the time) is
cached on the way out, and the worker processes are stopped at once (toolkit.machine.interrupts).
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.markup import escape
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from toolkit.retrieval.encoder import DerivedEncoder, Encoder, l2_normalise
from toolkit.machine.console import console, warn
from toolkit.machine.interrupts import interrupts_deferred, worker_batches
from toolkit.data.images import UnreadableImage, load_rgb, placeholder_image

PARTS = "part-*.npz"                # the cache's parts; nothing else in its folder is read
WRITING = ".writing-"               # a part being written has this prefix until it is whole
STALE_SECONDS = 3600.0              # a part-in-writing this old was left by a process that died


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVAL_RACE_CACHE", Path.home() / ".cache" / "retrieval-race")) / "embeddings"


def file_digest(path: Path) -> str:
    """Hash of a file's bytes: the cache key of its embedding."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of one encoder fingerprint, stored as append-only .npz parts in one folder.

    A part is written under a name the reader never looks at, then moved into place, so it is whole
    or absent. One that is damaged all the same (a disk fault, a leftover of an older version) is
    skipped and removed with one warning, and its images are embedded again."""

    def __init__(self, root: Path, fingerprint: str):
        self.folder = Path(root) / fingerprint
        self._vectors: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            parts = {part: _read_part(part) for part in sorted(self.folder.glob(PARTS))}
            widths = Counter()             # a part of another width than most vectors is damaged too
            for stored in filter(None, parts.values()):
                widths[stored[1].shape[1]] += len(stored[0])
            width = widths.most_common(1)[0][0] if widths else None
            self._vectors, damaged = {}, []
            for part, stored in parts.items():
                if stored is None or stored[1].shape[1] != width:
                    damaged.append(part)
                else:
                    self._vectors.update(zip(*stored))
            if damaged:
                _remove(damaged)
                names = ", ".join(part.name for part in damaged[:3]) + (", ..." if len(damaged) > 3 else "")
                warn(escape(f"embedding cache {self.folder}: skipped and removed {len(damaged)} damaged "
                            f"part{'s' if len(damaged) > 1 else ''} ({names}); their images are embedded again"))
            _remove([part for part in self.folder.glob(WRITING + "*") if _age(part) > STALE_SECONDS])
        return self._vectors

    def get(self, key: str) -> np.ndarray | None:
        return self._load().get(key)

    def __len__(self) -> int:
        return len(self._load())

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add embeddings as a part of their own; a cache that cannot be written is a warning (the
        vectors are still used in this run)."""
        if not len(keys):
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        self._load().update(zip(keys, vectors))
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
        writing = self.folder / (WRITING + name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(writing, "wb") as stream:
                np.savez(stream, keys=np.array(list(keys)), vectors=vectors)
            os.replace(writing, self.folder / name)
        except OSError as error:
            warn(escape(f"embedding cache {self.folder} not written ({error.strerror or error}); "
                        "these embeddings are used but not kept"))
        finally:
            _remove([writing])          # after a failure or a Ctrl-C mid-write: no half part left


def _read_part(part: Path) -> tuple[list[str], np.ndarray] | None:
    """A part's keys and (n, d) finite float vectors; None when it is damaged in any way."""
    try:
        with np.load(part) as stored:
            keys, vectors = stored["keys"], stored["vectors"]
    except Exception:   # noqa: BLE001 - whatever a damaged file makes zipfile or numpy raise
        return None
    if keys.ndim != 1 or keys.dtype.kind != "U" or vectors.ndim != 2 or len(keys) != len(vectors) \
            or vectors.dtype.kind != "f" or not np.isfinite(vectors).all():
        return None
    return keys.tolist(), vectors.astype(np.float32)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


@dataclass
class Embeddings:
    paths: list[Path]
    vectors: np.ndarray                                   # (n, d) float32, L2-normalised, in order
    problems: dict[int, str] = field(default_factory=dict)  # row -> why that file could not be read
    from_cache: int = 0
    computed: int = 0
    seconds: float = 0.0

    @property
    def unreadable(self) -> list[tuple[Path, str]]:
        return [(self.paths[row], reason) for row, reason in sorted(self.problems.items())]

    @property
    def readable_mask(self) -> np.ndarray:
        mask = np.ones(len(self.paths), dtype=bool)
        mask[list(self.problems)] = False
        return mask

    def select(self, paths: Sequence[Path]) -> "Embeddings":
        """The embeddings of these paths (each one of self.paths), in their order."""
        row_of = {path: row for row, path in enumerate(self.paths)}
        rows = [row_of[Path(path)] for path in paths]
        problems = {new: self.problems[old] for new, old in enumerate(rows) if old in self.problems}
        return Embeddings(paths=[self.paths[row] for row in rows], vectors=self.vectors[rows], problems=problems,
                          from_cache=len(rows))


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], encoder: Encoder):
        self.paths = list(paths)
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image, problem = load_rgb(self.paths[index]), ""
        except UnreadableImage as error:
            image, problem = placeholder_image(), error.reason
        return index, self.encoder.preprocess(image), problem


class _Collate:
    """Top-level (picklable) collate: indices, the encoder's batch, decode problems."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def __call__(self, items):
        indices = [index for index, _, _ in items]
        problems = [problem for _, _, problem in items]
        return indices, self.encoder.collate([item for _, item, _ in items]), problems


class _Speed(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "… img/s", style="cyan")


def progress_bar(transient: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Speed(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient)


def default_workers() -> int:
    return min(4, max(1, (os.cpu_count() or 2) // 2))


def uncached_paths(encoder: Encoder, paths: Sequence[Path], cache_dir: Path | None = None,
                   flip_tta: bool = False) -> list[Path]:
    """The paths whose embeddings are not in the cache yet (a derived encoder's live in its base's)."""
    while isinstance(encoder, DerivedEncoder):
        encoder = encoder.base
    cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder.fingerprint + (":flip" if flip_tta else ""))
    return [Path(path) for path in paths if not Path(path).is_file() or cache.get(file_digest(Path(path))) is None]


def _plain_vectors(encoder: Encoder, batch, keys: Sequence[str], plain_cache: EmbeddingCache) -> np.ndarray:
    """The batch's plain embeddings: from the cache when every one is there (a flip pass after the
    plain one then costs one model pass, not two), else encoded."""
    known = [plain_cache.get(key) for key in keys]
    if all(vector is not None for vector in known):
        return np.stack(known)
    return encoder.encode(batch)


def embed_images(encoder: Encoder, paths: Sequence[Path], cache_dir: Path | None = None,
                 flip_tta: bool = False, num_workers: int | None = None,
                 description: str = "embedding", show_progress: bool = True) -> Embeddings:
    """Embeddings of `paths` in order; cached ones are read, the rest computed in batches.

    A DerivedEncoder (such as a trained adapter) is served from its base: the base's embeddings,
    cached under the base's fingerprint, passed through `encoder.project`. Its own embeddings are
    never cached."""
    started = time.perf_counter()
    if isinstance(encoder, DerivedEncoder):
        from_base = embed_images(encoder.base, paths, cache_dir=cache_dir, flip_tta=flip_tta, num_workers=num_workers,
                                 description=description, show_progress=show_progress)
        return Embeddings(paths=from_base.paths, vectors=encoder.project(from_base.vectors),
                          problems=from_base.problems, from_cache=from_base.from_cache,
                          computed=from_base.computed, seconds=time.perf_counter() - started)
    paths = [Path(path) for path in paths]
    cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder.fingerprint + (":flip" if flip_tta else ""))
    plain_cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder.fingerprint) if flip_tta else None
    keys = [file_digest(path) if path.is_file() else f"missing:{path}" for path in paths]
    rows: list[np.ndarray | None] = [cache.get(key) for key in keys]
    todo = [index for index, row in enumerate(rows) if row is None]
    problems: dict[int, str] = {}

    if todo:
        workers = default_workers() if num_workers is None else num_workers
        if len(todo) <= encoder.batch_size:
            workers = 0  # not worth starting processes for one batch
        loader = DataLoader(_ImageFiles([paths[index] for index in todo], encoder),
                            batch_size=encoder.batch_size, shuffle=False, num_workers=workers,
                            collate_fn=_Collate(encoder), pin_memory=encoder.device.type == "cuda",
                            prefetch_factor=4 if workers else None, persistent_workers=False)
        new_keys, new_vectors = [], []
        try:
            with progress_bar(transient=not show_progress) as progress, worker_batches(loader) as batches:
                task = progress.add_task(description, total=len(todo), visible=show_progress)
                for batch_indices, batch, decode_problems in batches:
                    if flip_tta:
                        vectors = l2_normalise(_plain_vectors(encoder, batch, [keys[todo[position]] for position in
                                                                               batch_indices], plain_cache)
                                               + encoder.encode(encoder.flip(batch)))
                    else:
                        vectors = encoder.encode(batch)
                    for position, problem, vector in zip(batch_indices, decode_problems, vectors):
                        index = todo[position]
                        rows[index] = vector
                        if problem:
                            problems[index] = problem
                        else:
                            new_keys.append(keys[index])
                            new_vectors.append(vector)
                    progress.advance(task, len(batch_indices))
        finally:    # what was computed is kept, also when interrupted or out of time
            with interrupts_deferred():
                cache.put(new_keys, np.stack(new_vectors) if new_vectors else np.zeros((0, 0), np.float32))

    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    return Embeddings(paths=paths, vectors=vectors, problems=problems, from_cache=len(paths) - len(todo),
                      computed=len(todo), seconds=time.perf_counter() - started)
