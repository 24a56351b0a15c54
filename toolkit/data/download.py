"""Fetch a competition archive (http(s) or a Google Drive share link) and unpack it safely.

    download("https://example.org/comp.zip")                       # -> data/comp/
    download("https://drive.google.com/file/d/<id>/view", to="data/comp", sha256="ab12...")

What happens, in order, for a target folder T (default ``data/<name>``, the name taken from the
URL's file name or, for Drive links, from the server's Content-Disposition):

1. T holds the completion marker (``T/.retrieval-race-download.json``) from the same source (or
   with the expected SHA-256): nothing is done; the result says ``already=True``.
2. The archive streams into ``T.part`` beside T, with a rich progress bar (size, speed, time
   left). A broken transfer keeps the ``.part`` file; the next call resumes it with
   ``Range: bytes=N-`` (``If-Range`` guarded); a server that answers 200 instead of 206 means a
   fresh start. ``.T.download.json`` remembers the source URL, so a ``.part`` of another URL is
   never continued.
3. The SHA-256 is always computed (and recorded in the marker); with ``sha256=`` a mismatch is an
   error and the file is renamed to ``T.part.bad``, never kept as good.
4. The format is sniffed from the bytes (zip, tar, tar.gz/.bz2/.xz); anything else, a web page
   included, is an error and the file is renamed ``.bad``. A good archive is kept as ``T.zip``,
   ``T.tar.gz``, ... beside T.
5. It is unpacked into a temporary sibling ``.T.unpacking-*``; T appears, marker inside, by one
   atomic rename, so a half-unpacked folder never looks complete. No entry may leave the folder:
   absolute paths and ``..`` refuse the whole archive; symbolic and hard links (and devices,
   fifos) are skipped with a warning, never created; tar members also pass
   :func:`tarfile.data_filter` where Python has it.
6. The layout is checked with :func:`toolkit.data.dataset.find_competition`; a problem is a warning
   (the data stays).

Every failure is a :class:`DownloadError` with a one-line message for the command line.
"""
from __future__ import annotations

import email.message
import hashlib
import html.parser
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
import urllib3
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from toolkit.machine.console import console, human_size, warn
from toolkit.data.dataset import CompetitionData, LayoutError, describe, find_competition

__all__ = ["DownloadError", "DownloadResult", "UnsafeArchive", "archive_format", "describe_connection_error", "download",
           "drive_file_id", "resolve_url", "safe_unpack"]

#: Where a Google Drive file id is downloaded from (tests point it at a loopback server).
DRIVE_DOWNLOAD_ENDPOINT = "https://drive.google.com/uc"
#: (connect, read) seconds: a dead network fails instead of hanging.
DEFAULT_TIMEOUT = (10.0, 60.0)
CHUNK_BYTES = 1 << 20
MARKER_NAME = ".retrieval-race-download.json"
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tbz", ".txz", ".tar", ".zip")
_DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
_USER_AGENT = "retrieval-race-download/1"


class DownloadError(RuntimeError):
    """A download or unpacking step failed; the message is one line for the user."""


class UnsafeArchive(DownloadError):
    """An archive entry would land outside the target folder (absolute path or '..')."""


@dataclass(frozen=True)
class Source:
    """What to fetch: ``url`` as requested, ``drive_id`` when it is a Google Drive file."""

    url: str
    original: str
    drive_id: str | None = None


@dataclass
class DownloadResult:
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


# ---------------------------------------------------------------- URLs

def drive_file_id(url: str) -> str | None:
    """The file id of a Google Drive share / download link, or None for other URLs.

    Accepts ``/file/d/<id>/view``, ``/file/d/<id>/edit``, ``open?id=<id>``, ``uc?id=<id>`` and
    ``drive.usercontent.google.com/download?id=<id>``; a folder link is an error (Drive folders
    cannot be fetched as one file).
    """
    parts = urlsplit(url)
    if parts.hostname not in _DRIVE_HOSTS:
        return None
    if "/folders/" in parts.path:
        raise DownloadError(f"{url}: a Google Drive folder cannot be downloaded as one file; "
                            "share the archive itself (a .zip or .tar.gz), not its folder")
    found = re.search(r"/(?:file|document|presentation|spreadsheets)/(?:u/\d+/)?d/([\w-]{10,})", parts.path)
    if found:
        return found.group(1)
    ids = parse_qs(parts.query).get("id")
    if ids and re.fullmatch(r"[\w-]{10,}", ids[0]):
        return ids[0]
    raise DownloadError(f"{url}: a Google Drive link without a file id; use the file's share link "
                        "(https://drive.google.com/file/d/<id>/view)")


def resolve_url(url: str) -> Source:
    """The URL to request: Drive share links become the direct download endpoint."""
    url = url.strip()
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise DownloadError(f"{url!r} is not an http(s) URL; pass the archive's link, "
                            "e.g. https://host/competition.zip or a Google Drive share link")
    drive_id = drive_file_id(url)
    if drive_id:
        return Source(f"{DRIVE_DOWNLOAD_ENDPOINT}?{urlencode({'export': 'download', 'id': drive_id})}",
                      original=url, drive_id=drive_id)
    return Source(url, original=url)


def _source_key(source: Source) -> str:
    """What identifies a download across calls (Drive links of one file compare equal)."""
    return f"gdrive:{source.drive_id}" if source.drive_id else source.url


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


# ---------------------------------------------------------------- HTTP

def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = _USER_AGENT
    return session


def describe_connection_error(error: BaseException) -> str:
    """A few words for why a connection failed: "connection refused", "host name not found", ..."""
    text = str(error)
    for needle, reason in (("Connection refused", "connection refused"),
                           ("Name or service not known", "host name not found"),
                           ("nodename nor servname", "host name not found"),
                           ("Temporary failure in name resolution", "host name not found"),
                           ("Failed to resolve", "host name not found"),
                           ("getaddrinfo failed", "host name not found"),
                           ("Network is unreachable", "network unreachable"),
                           ("No route to host", "no route to host"),
                           ("timed out", "timed out"),
                           ("RemoteDisconnected", "the server closed the connection"),
                           ("Connection reset", "the connection was reset")):
        if needle in text:
            return reason
    return text.splitlines()[0][:160] if text else type(error).__name__


_HTTP_HINTS = {
    401: "the link needs a login; ask for a public link",
    403: "access denied; is the link shared publicly, or has it expired?",
    404: "no file at this address; check the link",
    410: "the file is gone; ask for a new link",
    429: "too many requests; wait a minute and run the command again",
}


def _get(session: requests.Session, url: str, start: int, validator: str | None,
         timeout: tuple[float, float]) -> requests.Response:
    headers = {"Accept-Encoding": "identity"}    # byte offsets must count the file as stored
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    host = urlsplit(url).netloc
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.exceptions.SSLError as error:
        raise DownloadError(f"{host}: TLS/SSL error ({describe_connection_error(error)})") from None
    except requests.exceptions.Timeout:
        raise DownloadError(f"{host}: no answer within {timeout[0]:.0f} s; check the network and the link") from None
    except requests.exceptions.ConnectionError as error:
        raise DownloadError(f"cannot reach {host}: {describe_connection_error(error)}") from None
    except requests.exceptions.RequestException as error:
        raise DownloadError(f"{url}: {describe_connection_error(error)}") from None
    if response.status_code >= 400 and response.status_code != 416:
        response.close()
        hint = _HTTP_HINTS.get(response.status_code, "the server refused the request")
        raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason or ''}".rstrip()
                            + f" ({hint})")
    return response


class _ConfirmPage(html.parser.HTMLParser):
    """Collects the forms (action + hidden inputs) and 'confirm=' links of a Drive warning page."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[dict[str, str], dict[str, str]]] = []
        self.confirm_links: list[str] = []
        self._form: tuple[dict[str, str], dict[str, str]] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = (attributes, {})
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name"):
            if attributes.get("type", "hidden").lower() == "hidden":
                self._form[1][attributes["name"]] = attributes.get("value", "")
        elif tag == "a" and "confirm=" in attributes.get("href", ""):
            self.confirm_links.append(attributes["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def _is_web_page(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/html")


def _drive_confirm_url(response: requests.Response, source: Source) -> str:
    """The URL behind Google Drive's "can't scan this file for viruses" page."""
    page = response.content.decode(response.encoding or "utf-8", errors="replace")
    parser = _ConfirmPage()
    parser.feed(page)
    for attributes, inputs in parser.forms:
        if attributes.get("id") == "download-form" or "confirm" in inputs or "download" in attributes.get("action", ""):
            action = urljoin(response.url, attributes.get("action") or response.url)
            separator = "&" if urlsplit(action).query else "?"
            return f"{action}{separator}{urlencode(inputs)}" if inputs else action
    if parser.confirm_links:
        return urljoin(response.url, parser.confirm_links[0])
    for name, value in response.cookies.items():
        if name.startswith("download_warning"):
            return f"{source.url}&{urlencode({'confirm': value})}"
    if "accounts.google.com" in response.url or "ServiceLogin" in page:
        raise DownloadError(f"{source.original}: Google Drive asks for a login; share the file with "
                            "'Anyone with the link'")
    if re.search(r"quota|too many users", page, re.IGNORECASE):
        raise DownloadError(f"{source.original}: Google Drive's download quota for this file is "
                            "exceeded; try again later or ask for another link")
    raise DownloadError(f"{source.original}: Google Drive answered with a web page, not the file; "
                        "is it shared with 'Anyone with the link'?")


def _open(session: requests.Session, source: Source, start: int, validator: str | None,
          timeout: tuple[float, float]) -> requests.Response:
    """The response carrying the file (Drive's confirmation pages followed), from byte *start*."""
    url = source.url
    for _ in range(4):
        response = _get(session, url, start, validator, timeout)
        if not (source.drive_id and _is_web_page(response)):
            return response
        url = _drive_confirm_url(response, source)
        response.close()
    raise DownloadError(f"{source.original}: Google Drive kept answering with confirmation pages")


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None where absent or '*'."""
    found = re.fullmatch(r"\s*bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    if not found:
        return None, None
    first, total = found.groups()
    return (None if first == "*" else int(first)), (None if total == "*" else int(total))


def _validator(response: requests.Response) -> str | None:
    """A strong ETag or Last-Modified, for If-Range on a later resume."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _progress(show: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=not show, disable=not show)


# ---------------------------------------------------------------- the files beside T

class _Place:
    """The paths that belong to one target folder T."""

    def __init__(self, target: Path):
        self.target = target
        self.part = target.with_name(target.name + ".part")
        self.state_file = target.with_name(f".{target.name}.download.json")
        self.marker = target / MARKER_NAME

    def archive(self, suffix: str) -> Path:
        return self.target.with_name(self.target.name + suffix)

    def read_state(self, key: str) -> dict:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"source": key}
        if state.get("source") != key:   # another URL's leftovers: never continue them
            self.part.unlink(missing_ok=True)
            return {"source": key}
        return state

    def write_state(self, state: dict) -> None:
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.state_file)

    def read_marker(self) -> dict | None:
        try:
            return json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return None


def _finished(place: _Place, source: Source, expected: str | None) -> DownloadResult | None:
    """The result of an earlier finished download into T, or None when T has none."""
    marker = place.read_marker()
    if marker is None:
        if place.target.exists() and (not place.target.is_dir() or any(place.target.iterdir())):
            raise DownloadError(f"{place.target} already exists and was not made by `invoke download`; "
                                "choose another --to or move it away")
        return None
    if expected and marker.get("sha256") != expected:
        raise DownloadError(f"{place.target} holds a download with SHA-256 {marker.get('sha256')}, not the "
                            f"expected {expected}; choose another --to or delete {place.target}")
    if not expected and marker.get("source") != _source_key(source):
        raise DownloadError(f"{place.target} holds a download of {marker.get('url')}; choose another --to "
                            f"or delete {place.target}")
    archive = place.target.parent / marker["archive"] if marker.get("archive") else None
    result = DownloadResult(folder=place.target, archive=archive if archive and archive.exists() else None,
                            sha256=marker.get("sha256", ""), already=True)
    _check_layout(result)
    return result


# ---------------------------------------------------------------- fetching

def _sha256_of(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


def _fetch(session: requests.Session, source: Source, place: _Place, response: requests.Response | None,
           expected: str | None, timeout: tuple[float, float], show_progress: bool,
           result: DownloadResult) -> Path:
    """Download (or resume) into T.part, check it, and keep it as T.<format suffix>."""
    key = _source_key(source)
    state = place.read_state(key)
    if state.get("complete") and state.get("suffix") and place.archive(state["suffix"]).is_file():
        archive = place.archive(state["suffix"])
        if response is not None:
            response.close()
        if expected and state.get("sha256") != expected:
            _reject(archive, place, f"checksum mismatch for {archive}: expected {expected}, got {state.get('sha256')}")
        console.print(f"{escape(str(archive))} was downloaded before; unpacking it again")
        result.sha256 = state["sha256"]
        return archive

    start = place.part.stat().st_size if place.part.is_file() else 0
    if response is not None and start:
        response.close()    # opened before the target was known: ask again, from the offset
        response = None
    while True:
        if response is None:
            response = _open(session, source, start, state.get("validator"), timeout)
        first, total = _content_range(response)
        if not start or (response.status_code == 206 and first == start):
            break
        if response.status_code == 416 and total == start:
            break                                        # the .part already holds the whole file
        if response.status_code == 200:
            console.print("the server does not resume this file (it answered 200, not 206); starting over")
            start, total = 0, None
            break
        response.close()                                 # a range we did not ask for, or refused:
        response = None                                  # start over with a plain request
        place.part.unlink(missing_ok=True)
        state.pop("validator", None)
        start = 0
    with response:
        if start and response.status_code == 416:
            digest, received = _sha256_of(place.part), start
        else:
            if start:
                console.print(f"resuming {escape(place.part.name)} from {human_size(start)}")
                result.resumed_from = start
            length = response.headers.get("Content-Length")
            if total is None and length and length.isdigit():
                total = start + int(length)
            state["validator"] = _validator(response) or state.get("validator")
            place.write_state(state)
            _warn_if_short_of_disk(place.target.parent, (total or 0) - start)
            digest = _sha256_of(place.part) if start else hashlib.sha256()
            received = _stream(response, place.part, start, total, digest, show_progress, result)
    if total is not None and received != total:
        raise DownloadError(f"the transfer ended after {human_size(received)} of {human_size(total)}; run the same "
                            f"command again to resume ({place.part} is kept)")
    sha256 = digest.hexdigest()
    if expected and sha256 != expected:
        _reject(place.part, place, f"checksum mismatch: expected SHA-256 {expected}, got {sha256}; "
                                   "check the --sha256 value and the link")
    kind, suffix = archive_format(place.part)
    if suffix is None:
        _reject(place.part, place, f"the download is not an archive: {kind}")
    archive = place.archive(suffix)
    os.replace(place.part, archive)
    place.write_state({**state, "complete": True, "suffix": suffix, "sha256": sha256})
    result.sha256 = sha256
    console.print(f"downloaded {escape(str(archive))} ({human_size(archive.stat().st_size)}, {kind}, SHA-256 {sha256[:16]}…)")
    return archive


def _stream(response: requests.Response, part: Path, start: int, total: int | None, digest,
            show_progress: bool, result: DownloadResult) -> int:
    """Append the body to *part*; returns its size afterwards. A cut connection is a DownloadError."""
    received = start
    with _progress(show_progress) as progress, open(part, "ab" if start else "wb") as sink:
        task = progress.add_task(escape(part.name.removesuffix(".part")), total=total, completed=start)
        try:
            for chunk in response.raw.stream(CHUNK_BYTES, decode_content=False):
                sink.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                result.downloaded_bytes += len(chunk)
                progress.update(task, completed=received)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            sink.flush()
            of = f" of {human_size(total)}" if total else ""
            raise DownloadError(f"the connection broke after {human_size(received)}{of} "
                                f"({describe_connection_error(error)}); run the same command again to resume "
                                f"({part} is kept)") from None
    return received


def _reject(path: Path, place: _Place, message: str) -> None:
    """Rename a file that must not be used to *.bad, forget the state, and raise."""
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    place.state_file.unlink(missing_ok=True)
    raise DownloadError(f"{message} (the file is kept as {bad}, not used)")


def _warn_if_short_of_disk(folder: Path, remaining: int) -> None:
    if remaining <= 0:
        return
    free = shutil.disk_usage(folder).free
    if free < 2.2 * remaining:
        warn(f"{human_size(free)} free in {escape(str(folder))}; the archive ({human_size(remaining)} to go) and its unpacked "
             "copy need about twice that")


# ---------------------------------------------------------------- archives

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


def _check_layout(result: DownloadResult) -> None:
    try:
        result.competition = find_competition(result.folder)
    except LayoutError as error:
        result.layout_problem = " ".join(str(error).split())


# ---------------------------------------------------------------- the whole step

def _normalise_sha256(sha256: str | None) -> str | None:
    if not sha256:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits)")
    return value


def download(url: str, to: str | os.PathLike | None = None, sha256: str | None = None,
             data_root: str | os.PathLike = "data", timeout: tuple[float, float] = DEFAULT_TIMEOUT,
             show_progress: bool = True, session: requests.Session | None = None) -> DownloadResult:
    """Download *url* into the folder *to* (default ``data_root/<name>``), check it and unpack it.

    See the module docstring for the steps. Returns a DownloadResult (``already=True`` when a
    finished download was found and nothing was done); raises DownloadError with a one-line message.
    """
    source = resolve_url(url)
    expected = _normalise_sha256(sha256)
    session = session or _session()
    name = _name_from_url(source)
    target = Path(to) if to else (Path(data_root) / name if name else None)
    response = None
    if target is not None:
        done = _finished(_Place(target), source, expected)
        if done is not None:
            return done
    else:                                   # the name comes from the server (Drive links)
        response = _open(session, source, 0, None, timeout)
        target = Path(data_root) / _name_from_response(response, source)
        done = _finished(_Place(target), source, expected)
        if done is not None:
            response.close()
            return done
    place = _Place(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    result = DownloadResult(folder=target, archive=None, sha256="")
    archive = _fetch(session, source, place, response, expected, timeout, show_progress, result)
    result.archive = archive
    marker = {"url": source.original, "source": _source_key(source), "archive": archive.name,
              "sha256": result.sha256, "bytes": archive.stat().st_size,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result.skipped = safe_unpack(archive, target, marker)
    place.state_file.unlink(missing_ok=True)
    _check_layout(result)
    return result

