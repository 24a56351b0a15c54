"""Safe unpacking for `invoke download`: a zip or tar archive into a folder that appears only complete.

No entry may leave the folder: an absolute path or ``..`` refuses the whole archive; symbolic and
hard links (and devices, fifos) are skipped with a warning, never created; tar members also pass
:func:`tarfile.data_filter` where Python has it. The work happens in a temporary sibling renamed
into place at the end, with the completion marker inside, so a later call knows the folder is done.

No archive may unpack to more than UnpackLimits allow (20 GB, 200,000 entries, and 100 times the
archive's size once past 256 MB: far above a real competition archive of JPEGs, far below a zip
bomb). A zip's central directory is checked before anything is written; a tar's headers as its
stream goes, each member before its bytes are; and the bytes actually written are counted against
the same limits (headers can lie). Over a limit is an ArchiveTooBig naming the limit and how to
raise it (``invoke download URL --limits size=40GB``); nothing is kept.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from rich.markup import escape

from toolkit.data.fetch import CHUNK_BYTES, DownloadError
from toolkit.data.jsonfile import JsonInputError, read_json
from toolkit.machine.console import console, human_size

#: The completion marker inside a finished folder: where it came from, its archive and SHA-256.
MARKER_NAME = ".retrieval-race-download.json"


class UnsafeArchive(DownloadError):
    """An archive entry would land outside the target folder (absolute path or '..')."""


class ArchiveTooBig(DownloadError):
    """An archive that unpacks to more than its UnpackLimits allow."""


@dataclass(frozen=True)
class UnpackLimits:
    """How much one archive may unpack to. `max_ratio` (unpacked bytes over archive bytes) counts
    once the unpacked bytes pass `ratio_from_bytes`, so a small archive of text may compress well."""

    max_bytes: int = 20_000_000_000
    max_files: int = 200_000
    max_ratio: float = 100.0
    ratio_from_bytes: int = 256_000_000

    #: The words of `parse` and of the messages: "size=40GB,files=500000,ratio=200".
    WORDS = {"size": "max_bytes", "files": "max_files", "ratio": "max_ratio"}

    @classmethod
    def parse(cls, text: str) -> "UnpackLimits":
        """Limits from "size=40GB,files=500000,ratio=200" (any of them; the others keep their
        defaults; sizes in B, KB, MB, GB, TB or KiB, MiB, GiB, TiB). DownloadError if unreadable."""
        limits = cls()
        for part in filter(None, (piece.strip() for piece in text.split(","))):
            word, _, value = part.partition("=")
            field = cls.WORDS.get(word.strip().lower())
            try:
                if field is None:
                    raise ValueError
                number = _bytes(value) if field == "max_bytes" else float(value) if field == "max_ratio" \
                    else int(value)
                if number <= 0:
                    raise ValueError
            except ValueError:
                raise DownloadError(f"cannot read the unpacking limit {part!r}: give size=40GB, files=500000 "
                                    "or ratio=200, separated by commas") from None
            limits = replace(limits, **{field: number})
        return limits


def _bytes(text: str) -> int:
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", text, re.IGNORECASE)
    if not found:
        raise ValueError(text)
    number, unit = float(found.group(1)), (found.group(2) or "B").upper().rstrip("B") or "B"
    powers = {"B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
              "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}
    return int(number * powers[unit])


class _Allowance:
    """What an archive of `archive_bytes` may still unpack to: members announced by their headers
    (`admit`) and bytes actually written (`wrote`) count against the same limits."""

    def __init__(self, limits: UnpackLimits, archive: Path):
        self.limits, self.archive = limits, archive
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.entries = self.written = 0

    def admit(self, size: int) -> None:
        """One more entry (a file of *size* bytes, or a folder of 0) about to be created."""
        self.entries += 1
        if self.entries > self.limits.max_files:
            self._refuse(f"holds more than the {self.limits.max_files:,} files and folders allowed",
                         f"files={self.limits.max_files * 10}")
        self._check(self.written + size, "would unpack to")

    def expect(self, entries: int, size: int) -> None:
        """The whole archive, from its headers, before anything is written (zip)."""
        if entries > self.limits.max_files:
            self._refuse(f"holds {entries:,} files and folders, more than the {self.limits.max_files:,} allowed",
                         f"files={max(entries, self.limits.max_files * 10)}")
        self._check(size, "would unpack to")

    def wrote(self, count: int) -> None:
        """*count* more bytes are about to be written."""
        self.written += count
        self._check(self.written, "has unpacked")

    def _check(self, total: int, verb: str) -> None:
        limits = self.limits
        if total > limits.max_bytes:
            self._refuse(f"{verb} more than the {human_size(limits.max_bytes)} allowed",
                         f"size={human_size(2 * max(limits.max_bytes, total)).replace(' ', '')}")
        ratio = total / self.archive_bytes
        if total > limits.ratio_from_bytes and ratio > limits.max_ratio:
            self._refuse(f"{verb} {human_size(total)} from {human_size(self.archive_bytes)}, {ratio:,.0f} times its "
                         f"size, more than the {limits.max_ratio:g} allowed (a zip bomb?)", f"ratio={10 * ratio:.0f}")

    def _refuse(self, problem: str, raised: str) -> None:
        raise ArchiveTooBig(f"{self.archive.name} {problem}; nothing kept. If you trust it, raise the limit, "
                            f"e.g. invoke download URL --limits {raised}")


def _copy(source, sink, allowance: _Allowance) -> None:
    while chunk := source.read(CHUNK_BYTES):
        allowance.wrote(len(chunk))
        sink.write(chunk)


def archive_format(path: Path) -> tuple[str, str | None]:
    """(what the file is, the suffix it is kept under); suffix None: not an archive we unpack."""
    with open(path, "rb") as stream:
        head = stream.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path):
        return "zip archive", ".zip"
    compressed = {b"\x1f\x8b": ("gzip", ".tar.gz"), b"BZh": ("bzip2", ".tar.bz2"),
                  b"\xfd7zXZ\x00": ("xz", ".tar.xz")}
    for magic, (name, suffix) in compressed.items():
        if head.startswith(magic):
            return (f"tar archive ({name})", suffix) if _is_tar(path) else (f"a {name} file that is not a tar archive", None)
    if head[257:262] == b"ustar" or _is_tar(path):
        return "tar archive", ".tar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "a 7-Zip archive (not supported; unpack it with 7z and pass the folder to --data)", None
    if head.startswith(b"Rar!"):
        return "a RAR archive (not supported; unpack it with unrar and pass the folder to --data)", None
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "a web page (the link leads to a page, not to the file)", None
    if not head:
        return "an empty file", None
    return "not a zip or tar file", None


def _is_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as archive:
            return archive.next() is not None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False


def _safe_relative(name: str) -> PurePosixPath | None:
    """The member name as a relative path inside the folder; UnsafeArchive when it would escape."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise UnsafeArchive(f"the archive holds an absolute path ({name!r}); refused, nothing unpacked")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"the archive holds a path that leaves its folder ({name!r}); refused, nothing unpacked")
    return PurePosixPath(*parts) if parts else None


def _inside(root: Path, relative: PurePosixPath) -> Path:
    destination = root.joinpath(*relative.parts)
    resolved_root = os.path.realpath(root)
    if os.path.commonpath([resolved_root, os.path.realpath(destination)]) != resolved_root:
        raise UnsafeArchive(f"the archive entry {relative} would land outside {root}; refused")
    return destination


def _unpack_zip(archive: Path, folder: Path, skipped: list[str], allowance: _Allowance) -> None:
    with zipfile.ZipFile(archive) as bundle:
        plan = []
        for info in bundle.infolist():          # every name and size is checked before anything is written
            relative = _safe_relative(info.filename)
            if relative is None:
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                skipped.append(f"{info.filename} (symbolic link, not created)")
                continue
            plan.append((info, relative))
        allowance.expect(len(plan), sum(info.file_size for info, _ in plan if not info.is_dir()))
        for info, relative in plan:
            destination = _inside(folder, relative)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, open(destination, "wb") as sink:
                _copy(source, sink, allowance)


def _unpack_tar(archive: Path, folder: Path, skipped: list[str], allowance: _Allowance) -> None:
    data_filter = getattr(tarfile, "data_filter", None)
    with tarfile.open(archive, "r|*") as bundle:       # one streaming pass, even for .tar.gz
        for member in bundle:
            relative = _safe_relative(member.name)
            if member.issym() or member.islnk():
                kind = "symbolic link" if member.issym() else "hard link"
                skipped.append(f"{member.name} ({kind} to {member.linkname}, not created)")
                continue
            if not (member.isfile() or member.isdir()):
                skipped.append(f"{member.name} (device, fifo or other special file, not created)")
                continue
            if relative is None:
                continue
            if data_filter is not None:
                try:
                    data_filter(member, str(folder))
                except tarfile.FilterError as error:
                    raise UnsafeArchive(f"the archive entry {member.name!r} is unsafe ({error}); refused") from None
            destination = _inside(folder, relative)
            allowance.admit(member.size if member.isfile() else 0)     # its header, before its bytes
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = bundle.extractfile(member)
            with source, open(destination, "wb") as sink:
                _copy(source, sink, allowance)


def safe_unpack(archive: Path, target: Path, marker: dict | None = None,
                limits: UnpackLimits = UnpackLimits()) -> list[str]:
    """Unpack *archive* into the new folder *target*, atomically; returns the skipped members.

    Works in a temporary sibling and renames it to *target* at the end (with *marker*, if given,
    written inside first), so *target* is either absent or complete. Raises UnsafeArchive (and
    writes nothing at *target*) for entries that would escape, ArchiveTooBig for an archive over
    *limits*, DownloadError for damaged archives.
    """
    archive, target = Path(archive), Path(target)
    kind, suffix = archive_format(archive)
    if suffix is None:
        raise DownloadError(f"{archive}: not an archive ({kind})")
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}.unpacking-*"):
        shutil.rmtree(leftover, ignore_errors=True)      # an earlier unpacking that was cut short
    work = target.parent / f".{target.name}.unpacking-{secrets.token_hex(4)}"
    work.mkdir()                                         # (not mkdtemp: its 0700 would stick to T)
    skipped: list[str] = []
    try:
        with console.status(f"unpacking {escape(archive.name)}…"):
            (_unpack_zip if suffix == ".zip" else _unpack_tar)(archive, work, skipped, _Allowance(limits, archive))
        if marker is not None:
            (work / MARKER_NAME).write_text(json.dumps(marker, indent=1))
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.rename(work, target)
    except (UnsafeArchive, ArchiveTooBig):
        shutil.rmtree(work, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, OSError, RuntimeError,
            ValueError) as error:
        shutil.rmtree(work, ignore_errors=True)
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        if "encrypted" in reason or "password" in reason:
            reason = "password-protected; unpack it yourself and pass the folder to --data"
        raise DownloadError(f"cannot unpack {archive}: {reason}") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return skipped


def read_marker(folder: Path) -> dict | None:
    """The completion marker of a folder safe_unpack finished, or None (also for a damaged one)."""
    try:
        marker = read_json(Path(folder) / MARKER_NAME, "download marker")
    except JsonInputError:
        return None
    return marker if isinstance(marker, dict) else None
