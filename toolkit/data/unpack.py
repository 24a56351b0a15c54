"""Safe unpacking for `invoke download`: a zip or tar archive into a folder that appears only complete.

No entry may leave the folder: an absolute path or ``..`` refuses the whole archive; symbolic and
hard links (and devices, fifos) are skipped with a warning, never created; tar members also pass
:func:`tarfile.data_filter` where Python has it. The work happens in a temporary sibling renamed
into place at the end, with the completion marker inside, so a later call knows the folder is done.
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
from pathlib import Path, PurePosixPath

from rich.markup import escape

from toolkit.data.fetch import CHUNK_BYTES, DownloadError
from toolkit.machine.console import console

#: The completion marker inside a finished folder: where it came from, its archive and SHA-256.
MARKER_NAME = ".retrieval-race-download.json"


class UnsafeArchive(DownloadError):
    """An archive entry would land outside the target folder (absolute path or '..')."""


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


def _unpack_zip(archive: Path, folder: Path, skipped: list[str]) -> None:
    with zipfile.ZipFile(archive) as bundle:
        plan = []
        for info in bundle.infolist():          # every name is checked before anything is written
            relative = _safe_relative(info.filename)
            if relative is None:
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                skipped.append(f"{info.filename} (symbolic link, not created)")
                continue
            plan.append((info, relative))
        for info, relative in plan:
            destination = _inside(folder, relative)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with bundle.open(info) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_BYTES)


def _unpack_tar(archive: Path, folder: Path, skipped: list[str]) -> None:
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
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = bundle.extractfile(member)
            with source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, CHUNK_BYTES)


def safe_unpack(archive: Path, target: Path, marker: dict | None = None) -> list[str]:
    """Unpack *archive* into the new folder *target*, atomically; returns the skipped members.

    Works in a temporary sibling and renames it to *target* at the end (with *marker*, if given,
    written inside first), so *target* is either absent or complete. Raises UnsafeArchive (and
    writes nothing at *target*) for entries that would escape, DownloadError for damaged archives.
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
            (_unpack_zip if suffix == ".zip" else _unpack_tar)(archive, work, skipped)
        if marker is not None:
            (work / MARKER_NAME).write_text(json.dumps(marker, indent=1))
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        os.rename(work, target)
    except UnsafeArchive:
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
    """The completion marker of a folder safe_unpack finished, or None."""
    try:
        return json.loads((Path(folder) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
