"""`invoke download`: a competition archive from a link to a checked, unpacked data folder.

    download("https://example.org/comp.zip")                       # -> data/comp/
    download("https://drive.google.com/file/d/<id>/view", to="data/comp", sha256="ab12...")

For a target folder T (default ``data/<name>``, the name taken from the URL's file name or, for
Drive links, from the server's Content-Disposition): a T holding the completion marker of the same
source (or the expected SHA-256) means nothing to do; otherwise the archive is fetched into
``T.part`` (toolkit.data.fetch: resumable, Drive pages, checksum), its format sniffed from the
bytes and kept as ``T.zip``, ``T.tar.gz``, ... beside T (anything else, a web page included, is an
error and renamed ``.bad``), unpacked safely into T (toolkit.data.unpack, within UnpackLimits) and its layout checked
with :func:`toolkit.data.dataset.find_competition`, where a problem is a warning and the data stays.
Every failure is a :class:`DownloadError` with a one-line message for the command line.
"""
from __future__ import annotations

import email.message
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
from rich.markup import escape

from toolkit.data.dataset import CompetitionData, LayoutError, describe, find_competition
from toolkit.data.fetch import (DEFAULT_TIMEOUT, MAX_DOWNLOAD_SECONDS, DownloadError, Place, Source,
                                describe_connection_error, drive_file_id, fetch_part, new_session, open_source,
                                reject, resolve_url, transfer_deadline)
from toolkit.data.http_deadline import Deadline, limit_session
from toolkit.data.unpack import (MARKER_NAME, ArchiveTooBig, UnpackLimits, UnsafeArchive, archive_format,
                                 read_marker, safe_unpack)
from toolkit.machine.console import console, human_size

__all__ = ["MARKER_NAME", "ArchiveTooBig", "DownloadError", "DownloadResult", "UnpackLimits", "UnsafeArchive",
           "archive_format", "describe_connection_error", "download", "drive_file_id", "resolve_url", "safe_unpack"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tbz", ".txz", ".tar", ".zip")


@dataclass
class DownloadResult:
    """What download() did, and the competition it found in the folder."""

    folder: Path                                  # the unpacked competition folder (T)
    archive: Path | None                          # the kept archive beside it
    sha256: str
    already: bool = False                         # True: a finished download was found, nothing done
    downloaded_bytes: int = 0                     # bytes fetched by this call
    resumed_from: int = 0                         # offset the transfer resumed at (0: from scratch)
    competition: CompetitionData | None = None
    layout_problem: str | None = None             # why find_competition refused the layout
    skipped: list[str] = field(default_factory=list)   # archive members not created, and why

    def summary(self) -> str:
        if self.competition is not None:
            return f"{self.competition.root}: {describe(self.competition)}"
        return f"{self.folder}: layout problem: {self.layout_problem}"


def _strip_archive_suffix(name: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _clean_name(name: str) -> str:
    name = re.sub(r"[^\w.-]+", "-", Path(name.replace("\\", "/")).name).strip(".-")
    return name or "competition"


def _name_from_url(source: Source) -> str | None:
    """A folder name from the URL's last path part when it names an archive; else None."""
    if source.drive_id:
        return None
    last = PurePosixPath(urlsplit(source.url).path).name
    stem = _strip_archive_suffix(last)
    return _clean_name(stem) if stem != last else None


def _name_from_response(response: requests.Response, source: Source) -> str:
    disposition = response.headers.get("Content-Disposition")
    if disposition:
        message = email.message.Message()
        message["content-disposition"] = disposition
        filename = message.get_filename()
        if filename:
            return _clean_name(_strip_archive_suffix(filename))
    if source.drive_id:
        return _clean_name(f"drive-{source.drive_id}")
    last = PurePosixPath(urlsplit(source.url).path).name
    return _clean_name(_strip_archive_suffix(last) or urlsplit(source.url).hostname or "")


def _finished(place: Place, source: Source, expected: str | None) -> DownloadResult | None:
    """The result of an earlier finished download into T, or None when T has none."""
    marker = read_marker(place.target)
    if marker is None:
        if place.target.exists() and (not place.target.is_dir() or any(place.target.iterdir())):
            raise DownloadError(f"{place.target} already exists and was not made by `invoke download`; "
                                "choose another --to or move it away")
        return None
    if expected and marker.get("sha256") != expected:
        raise DownloadError(f"{place.target} holds a download with SHA-256 {marker.get('sha256')}, not the "
                            f"expected {expected}; choose another --to or delete {place.target}")
    if not expected and marker.get("source") != source.key:
        raise DownloadError(f"{place.target} holds a download of {marker.get('url')}; choose another --to "
                            f"or delete {place.target}")
    archive = place.target.parent / marker["archive"] if marker.get("archive") else None
    result = DownloadResult(folder=place.target, archive=archive if archive and archive.exists() else None,
                            sha256=marker.get("sha256", ""), already=True)
    _check_layout(result)
    return result


def _keep_archive(session: requests.Session, source: Source, place: Place, response: requests.Response | None,
                  expected: str | None, timeout: tuple[float, float], show_progress: bool,
                  result: DownloadResult, deadline: Deadline) -> Path:
    """Download (or resume) into T.part, check it, and keep it as T.<format suffix>."""
    state = place.read_state(source.key)
    if state.get("complete") and state.get("suffix") and place.archive(state["suffix"]).is_file():
        archive = place.archive(state["suffix"])
        if response is not None:
            response.close()
        if expected and state.get("sha256") != expected:
            reject(archive, place, f"checksum mismatch for {archive}: expected {expected}, got {state.get('sha256')}")
        console.print(f"{escape(str(archive))} was downloaded before; unpacking it again")
        result.sha256 = state["sha256"]
        return archive
    fetched = fetch_part(session, source, place, state, response, expected, timeout, show_progress, deadline)
    result.downloaded_bytes, result.resumed_from = fetched.downloaded_bytes, fetched.resumed_from
    kind, suffix = archive_format(place.part)
    if suffix is None:
        reject(place.part, place, f"the download is not an archive: {kind}")
    archive = place.archive(suffix)
    os.replace(place.part, archive)
    place.write_state({**state, "complete": True, "suffix": suffix, "sha256": fetched.sha256})
    result.sha256 = fetched.sha256
    console.print(f"downloaded {escape(str(archive))} ({human_size(archive.stat().st_size)}, {kind}, "
                  f"SHA-256 {fetched.sha256[:16]}…)")
    return archive


def _check_layout(result: DownloadResult) -> None:
    try:
        result.competition = find_competition(result.folder)
    except LayoutError as error:
        result.layout_problem = " ".join(str(error).split())


def _normalise_sha256(sha256: str | None) -> str | None:
    if not sha256:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    return value


def download(url: str, to: str | os.PathLike | None = None, sha256: str | None = None,
             data_root: str | os.PathLike = "data", timeout: tuple[float, float] = DEFAULT_TIMEOUT,
             show_progress: bool = True, session: requests.Session | None = None,
             max_seconds: float | None = MAX_DOWNLOAD_SECONDS, limits: UnpackLimits | str | None = None
             ) -> DownloadResult:
    """Download *url* into the folder *to* (default ``data_root/<name>``), check it and unpack it.

    See the module docstring for the steps. *timeout* is (connect, idle) seconds: a transfer that
    brings less than 64 KB in the idle time has stalled; *max_seconds* bound the whole transfer
    (*session*, if given, is put under that deadline). *limits* bound what the archive may unpack
    to (UnpackLimits, or its text "size=40GB,files=500000,ratio=200"). Returns a DownloadResult
    (``already=True`` when a finished download was found and nothing was done); raises
    DownloadError with a one-line message.
    """
    source = resolve_url(url)
    expected = _normalise_sha256(sha256)
    limits = UnpackLimits.parse(limits) if isinstance(limits, str) else limits or UnpackLimits()
    name = _name_from_url(source)
    target = Path(to) if to else (Path(data_root) / name if name else None)
    if target is not None:
        done = _finished(Place(target), source, expected)
        if done is not None:
            return done
    with transfer_deadline(timeout, max_seconds) as deadline:
        session = limit_session(session or new_session(), deadline)
        response = None
        if target is None:                  # the name comes from the server (Drive links)
            response = open_source(session, source, 0, None, timeout, deadline)
            target = Path(data_root) / _name_from_response(response, source)
            done = _finished(Place(target), source, expected)
            if done is not None:
                response.close()
                return done
        place = Place(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        result = DownloadResult(folder=target, archive=None, sha256="")
        archive = _keep_archive(session, source, place, response, expected, timeout, show_progress, result, deadline)
    result.archive = archive
    marker = {"url": source.original, "source": source.key, "archive": archive.name,
              "sha256": result.sha256, "bytes": archive.stat().st_size,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result.skipped = safe_unpack(archive, target, marker, limits)
    place.state_file.unlink(missing_ok=True)
    _check_layout(result)
    return result
