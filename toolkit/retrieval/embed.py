"""Batched embedding extraction with an on-disk cache.

Decoding and preprocessing run in DataLoader worker processes, overlapped with the model in the
main process; the model runs under inference_mode (and autocast on CUDA, inside the Encoder). An
encoder whose CPU model each process loads itself (dlib's) runs in the workers too, one per core.
Flip test-time augmentation sums each image's plain and mirrored embeddings (normalised); both
come from one decoded, preprocessed batch and are cached apart, so a race that tries flip decodes
and detects each image once. A DerivedEncoder (e.g. an adapter) is served from its base's embeddings.

The cache is keyed by (encoder fingerprint [+ ":mirrored"], file content hash), so a renamed or
moved file is still a hit and an edited file is not; a second run over the same images re-embeds
nothing. File hashes are memoised by (path, size, modification time). Unreadable files are
embedded as a grey placeholder (a query must still be answered), reported by name, and never
cached. What was computed before a Ctrl-C (or the end of the time) is cached on the way out, and
the worker processes are stopped at once (toolkit.machine.interrupts).
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.markup import escape
from torch.utils.data import DataLoader, Dataset

from toolkit.retrieval.encoder import DerivedEncoder, Encoder, l2_normalise
from toolkit.machine.console import warn
from toolkit.views.progress import progress_bar
from toolkit.machine.interrupts import interrupts_deferred, raise_if_stopped, worker_batches
from toolkit.data.images import UnreadableImage, load_rgb, placeholder_image

MIRRORED = ":mirrored"              # the mirrored embeddings' cache: the fingerprint + this
PARTS = "part-*.npz"                # the cache's parts; nothing else in its folder is read
WRITING = ".writing-"               # a part being written has this prefix until it is whole
STALE_SECONDS = 3600.0              # a part-in-writing this old was left by a process that died


def default_cache_dir() -> Path:
    return Path(os.environ.get("RETRIEVAL_RACE_CACHE", Path.home() / ".cache" / "retrieval-race")) / "embeddings"


_DIGESTS: dict[tuple[str, int, int], str] = {}     # (path, size, mtime_ns) -> hash, for this process


def file_digest(path: Path) -> str:
    """Hash of a file's bytes: the cache key of its embedding; read once per (path, size,
    modification time) in a process."""
    status = os.stat(path)
    memo = (os.path.abspath(path), status.st_size, status.st_mtime_ns)
    known = _DIGESTS.get(memo)
    if known is None:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        known = _DIGESTS[memo] = digest.hexdigest()
    return known


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
    except Exception as error:   # noqa: BLE001 - whatever a damaged file makes zipfile or numpy raise
        raise_if_stopped(error)
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


@dataclass
class _Encoded:
    """One batch's embeddings: plain and mirrored (None where that side was not wanted)."""
    plain: np.ndarray | None
    mirrored: np.ndarray | None
    stats: Any


def _encode_sides(encoder: Encoder, batch, plain: bool, mirrored: bool) -> _Encoded:
    """The batch's plain and/or mirrored embeddings, both from the one preprocessed batch; its
    stats counted with its plain embeddings (an image is counted once, when first embedded)."""
    return _Encoded(plain=encoder.encode(batch) if plain else None,
                    mirrored=encoder.encode(encoder.flip(batch)) if mirrored else None,
                    stats=encoder.batch_stats(batch) if plain else None)


class _Collate:
    """Top-level (picklable) collate: (positions, the encoder's batch, decode problems); for an
    encoder that encodes in the workers, the batch's embeddings (_Encoded) instead of the batch.
    `needs[position]` = (plain wanted, mirrored wanted) for each image to embed."""

    def __init__(self, encoder: Encoder, needs: Sequence[tuple[bool, bool]]):
        self.encoder = encoder
        self.needs = list(needs) if encoder.encodes_in_workers else []

    def __call__(self, items):
        positions = [position for position, _, _ in items]
        problems = [problem for _, _, problem in items]
        batch = self.encoder.collate([item for _, item, _ in items])
        if self.encoder.encodes_in_workers:
            batch = _encode_sides(self.encoder, batch, *batch_needs(self.needs, positions))
        return positions, batch, problems


def batch_needs(needs: Sequence[tuple[bool, bool]], positions: Sequence[int]) -> tuple[bool, bool]:
    """Whether any image of the batch wants its plain / its mirrored embedding."""
    return any(needs[position][0] for position in positions), any(needs[position][1] for position in positions)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(encoder: Encoder | None = None) -> int:
    """Worker processes for embedding: one per core when the model runs in them (its work is
    the race's; the main process then only collects), else a few for decoding beside the model."""
    if encoder is not None and encoder.encodes_in_workers:
        return model_processes()
    return min(4, max(1, (os.cpu_count() or 2) // 2))


def model_processes(num_workers: int | None = None) -> int:
    """How many processes run an encoder that encodes in its workers (`num_workers` None: the default)."""
    return max(1, usable_cores() if num_workers is None else int(num_workers))


def _caches(encoder: Encoder, cache_dir: Path | None) -> tuple[EmbeddingCache, EmbeddingCache]:
    """The plain and the mirrored embeddings' caches of an encoder (a derived one's: its base's)."""
    while isinstance(encoder, DerivedEncoder):
        encoder = encoder.base
    root = cache_dir or default_cache_dir()
    return EmbeddingCache(root, encoder.fingerprint), EmbeddingCache(root, encoder.fingerprint + MIRRORED)


def passes_to_compute(encoder: Encoder, paths: Sequence[Path], cache_dir: Path | None = None,
                      flip_tta: bool | None = False) -> int:
    """Model passes that embedding `paths` still costs: one per image without a cached plain
    embedding, and (unless flip_tta is False: None is undecided) one per image without a mirrored one."""
    plain, mirrored = _caches(encoder, cache_dir)
    keys = [file_digest(path) if path.is_file() else None for path in map(Path, paths)]
    passes = sum(key is None or plain.get(key) is None for key in keys)
    if flip_tta is not False:
        passes += sum(key is None or mirrored.get(key) is None for key in keys)
    return passes


def embed_images(encoder: Encoder, paths: Sequence[Path], cache_dir: Path | None = None,
                 flip_tta: bool = False, mirrored_too: bool = False, num_workers: int | None = None,
                 description: str = "embedding", show_progress: bool = True) -> Embeddings:
    """Embeddings of `paths` in order; cached ones are read, the rest computed in batches.

    With flip_tta, each image's embedding is the normalised sum of its plain and mirrored ones;
    with mirrored_too (flip not decided yet), the mirrored ones are computed and cached beside the
    plain ones, so that trying flip afterwards decodes nothing again. Plain and mirrored embeddings
    of an image come from one decoded, preprocessed batch and are cached apart.

    A DerivedEncoder (such as a trained adapter) is served from its base: the base's embeddings,
    cached under the base's fingerprint, passed through `encoder.project`. Its own embeddings are
    never cached."""
    started = time.perf_counter()
    if isinstance(encoder, DerivedEncoder):
        from_base = embed_images(encoder.base, paths, cache_dir=cache_dir, flip_tta=flip_tta, mirrored_too=mirrored_too,
                                 num_workers=num_workers, description=description, show_progress=show_progress)
        return Embeddings(paths=from_base.paths, vectors=encoder.project(from_base.vectors),
                          problems=from_base.problems, from_cache=from_base.from_cache,
                          computed=from_base.computed, seconds=time.perf_counter() - started)
    paths = [Path(path) for path in paths]
    want_mirrored = flip_tta or (mirrored_too and encoder.flippable)
    plain_cache, mirrored_cache = _caches(encoder, cache_dir)
    keys = [file_digest(path) if path.is_file() else f"missing:{path}" for path in paths]
    plain: list[np.ndarray | None] = [plain_cache.get(key) for key in keys]
    mirrored: list[np.ndarray | None] = [mirrored_cache.get(key) if want_mirrored else None for key in keys]
    todo = [index for index in range(len(paths)) if plain[index] is None or (want_mirrored and mirrored[index] is None)]
    problems: dict[int, str] = {}
    if todo:
        _compute(encoder, [paths[index] for index in todo], [keys[index] for index in todo],
                 [(plain[index] is None, want_mirrored and mirrored[index] is None) for index in todo],
                 (plain_cache, mirrored_cache), num_workers, description, show_progress,
                 lambda position, side, vector: (plain, mirrored)[side].__setitem__(todo[position], vector),
                 lambda position, problem: problems.__setitem__(todo[position], problem))

    if not paths:
        vectors = np.zeros((0, 0), np.float32)
    elif flip_tta:
        vectors = l2_normalise(np.stack(plain) + np.stack(mirrored))
    else:
        vectors = np.stack(plain).astype(np.float32)
    return Embeddings(paths=paths, vectors=vectors, problems=problems, from_cache=len(paths) - len(todo),
                      computed=len(todo), seconds=time.perf_counter() - started)


def _compute(encoder: Encoder, paths: list[Path], keys: list[str], needs: list[tuple[bool, bool]],
             caches: tuple[EmbeddingCache, EmbeddingCache], num_workers: int | None, description: str,
             show_progress: bool, store, unreadable) -> None:
    """Embed `paths` (the sides `needs` says), handing each vector to store(position, side, vector)
    (side 0 plain, 1 mirrored) and each unreadable file to unreadable(position, reason); what was
    computed is cached on the way out, also when interrupted or out of time."""
    workers = default_workers(encoder) if num_workers is None else num_workers
    if len(paths) <= encoder.batch_size:
        workers = 0  # not worth starting processes for one batch
    loader = DataLoader(_ImageFiles(paths, encoder), batch_size=encoder.batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_Collate(encoder, needs),
                        pin_memory=encoder.device.type == "cuda" and not encoder.encodes_in_workers,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    fresh: tuple[dict, dict] = ({}, {})            # side -> key -> vector, to cache
    try:
        with progress_bar(transient=not show_progress) as progress, worker_batches(loader) as batches:
            task = progress.add_task(description, total=len(paths), visible=show_progress)
            for positions, batch, decode_problems in batches:
                encoded = batch if encoder.encodes_in_workers else \
                    _encode_sides(encoder, batch, *batch_needs(needs, positions))
                encoder.add_stats(encoded.stats)
                for side, vectors in enumerate((encoded.plain, encoded.mirrored)):
                    for position, problem, vector in zip(positions, decode_problems, () if vectors is None else vectors):
                        if not needs[position][side]:
                            continue            # cached already: the cached vector is kept
                        store(position, side, vector)
                        if not problem:
                            fresh[side][keys[position]] = vector
                for position, problem in zip(positions, decode_problems):
                    if problem:
                        unreadable(position, problem)
                progress.advance(task, len(positions))
    finally:
        with interrupts_deferred():
            for cache, vectors in zip(caches, fresh):
                cache.put(list(vectors), np.stack(list(vectors.values())) if vectors else np.zeros((0, 0), np.float32))
