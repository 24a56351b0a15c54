"""What travels between the race's driver and its cluster workers (toolkit.race.cluster), with no
Ray in it: the competition's files as a manifest or a shipped zip, and embeddings made elsewhere.

    manifest = data_manifest(data)                    # (relative path, size) of every image used
    present(root, manifest)                           # does a worker see these files at root?
    blob = pack(data); root = unpack(blob, folder)    # the images, shipped through Ray's object store
    Precomputed(fingerprint, flippable, report, {False: plain, True: flipped})   # a worker's vectors

A worker embeds what validation will ask for (plain and mirrored from one pass); the driver's
race reads them back through a Precomputed encoder, so validation, re-ranking, selection and the
submission are the driver's own code, exactly as in process.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from toolkit.retrieval.embed import Embeddings

Manifest = tuple[tuple[str, int], ...]


def used_files(data) -> list[Path]:
    """The images a race reads: training, then the test queries and gallery."""
    return [image.path for image in data.training] + list(data.queries) + list(data.gallery)


def data_manifest(data) -> Manifest:
    """Each image's path relative to the competition's root, with its size in bytes."""
    root = Path(data.root)
    return tuple((path.relative_to(root).as_posix(), path.stat().st_size) for path in used_files(data))


def present(root: Path, manifest: Manifest) -> bool:
    """Whether every file of the manifest is at `root` with its size (a disk the driver shares)."""
    try:
        return all((root / name).stat().st_size == size for name, size in manifest)
    except OSError:
        return False


def pack(data) -> bytes:
    """The race's images as one zip (stored, not compressed: they are JPEG and PNG already)."""
    buffer = io.BytesIO()
    root = Path(data.root)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in used_files(data):
            archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def unpack(blob: bytes, folder: Path) -> Path:
    """A packed competition unpacked into `folder` (the driver made it: names stay inside)."""
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        archive.extractall(folder)
    return folder


def rebased(embeddings: Embeddings, old_root: Path, new_root: Path) -> Embeddings:
    """The same embeddings, their paths moved from one competition root to another."""
    if Path(old_root) == Path(new_root):
        return embeddings
    return replace(embeddings, paths=[Path(new_root) / Path(path).relative_to(old_root) for path in embeddings.paths])


def relative_names(paths: Sequence[Path], root: Path) -> list[str]:
    return [Path(path).relative_to(root).as_posix() for path in paths]


@dataclass
class Precomputed:
    """An encoder whose embeddings a cluster worker made: validation reads them by path and flip
    (Embeddings.select), and nothing is embedded again here."""

    fingerprint: str
    flippable: bool
    report_text: str = ""
    by_flip: dict[bool, Embeddings] = field(default_factory=dict)

    def report(self) -> str:
        return self.report_text

    def embeddings(self, paths: Sequence[Path], flip: bool) -> Embeddings:
        if flip not in self.by_flip:
            raise RuntimeError(f"the worker did not embed {'flipped' if flip else 'plain'} images for validation")
        return self.by_flip[flip].select(paths)
