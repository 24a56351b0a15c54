"""The transfer step of `invoke download`: an archive's bytes, from http(s) or a Google Drive share
link, into ``T.part`` beside the target folder T.

A broken transfer keeps ``T.part``; the next call asks for the rest with ``Range: bytes=N-``
(``If-Range`` guarded) and starts over when the server answers 200 instead of 206. ``.T.download.json``
remembers the source, so a ``.part`` of another URL is never continued. Drive links go to the direct
download endpoint and through its "can't scan this file for viruses" page. The SHA-256 is always
computed; an expected one that does not match renames the file ``.bad``.

Every exchange runs under one toolkit.data.http_deadline.Deadline made by the caller (see
`transfer_deadline`): a transfer that brings less than 64 KB in the idle time (the read timeout)
is stalled, and the whole download has a total limit, both ending with the ``.part`` kept.
"""
from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
import urllib3
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from toolkit.data.http_deadline import Deadline
from toolkit.data.jsonfile import JsonInputError, read_json
from toolkit.machine.console import console, human_size, warn

#: Where a Google Drive file id is downloaded from (tests point it at a loopback server).
DRIVE_DOWNLOAD_ENDPOINT = "https://drive.google.com/uc"
#: (connect, idle) seconds: a dead network fails instead of hanging, and so does a transfer that
#: brings less than 64 KB in the idle time.
DEFAULT_TIMEOUT = (10.0, 60.0)
#: Seconds a whole download may take (a 20 GB archive at 1 MB/s takes under 6 hours).
MAX_DOWNLOAD_SECONDS = 24 * 3600.0
CHUNK_BYTES = 1 << 20
_DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")
_USER_AGENT = "retrieval-race-download/1"


class DownloadError(RuntimeError):
    """A download or unpacking step failed; the message is one line for the user."""


@dataclass(frozen=True)
class Source:
    """What to fetch: ``url`` as requested, ``drive_id`` when it is a Google Drive file."""

    url: str
    original: str
    drive_id: str | None = None

    @property
    def key(self) -> str:
        """What identifies a download across calls (Drive links of one file compare equal)."""
        return f"gdrive:{self.drive_id}" if self.drive_id else self.url


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


# ---------------------------------------------------------------- HTTP

def new_session() -> requests.Session:
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


def transfer_deadline(timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                      max_seconds: float | None = MAX_DOWNLOAD_SECONDS) -> Deadline:
    """The deadline a download's exchanges run under: *max_seconds* in all, and the idle time of
    *timeout* (its read part) without 64 KB arriving."""
    return Deadline(max_seconds, idle=timeout[1])


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def out_of_time(deadline: Deadline, what: str, then: str) -> DownloadError | None:
    """Once *deadline* has passed, the DownloadError saying that *what* stalled or took too long,
    and *then* what to do; None while time is left."""
    if deadline.expired == "idle":
        return DownloadError(f"{what} stalled: less than {human_size(deadline.min_progress)} in "
                             f"{_duration(deadline.idle)}; {then}")
    if deadline.expired == "total":
        return DownloadError(f"{what} took longer than the {_duration(deadline.seconds)} allowed; {then}")
    return None


def _get(session: requests.Session, url: str, start: int, validator: str | None,
         timeout: tuple[float, float], deadline: Deadline) -> requests.Response:
    headers = {"Accept-Encoding": "identity"}    # byte offsets must count the file as stored
    if start:
        headers["Range"] = f"bytes={start}-"
        if validator:
            headers["If-Range"] = validator
    host = urlsplit(url).netloc
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except requests.exceptions.RequestException as error:
        raise _request_error(host, url, error, timeout, deadline) from None
    late = out_of_time(deadline, f"{host}: the answer", _TRY_AGAIN)
    if late is not None:                # the connection was shut before the answer's headers ended
        response.close()
        raise late
    deadline.restart_idle()
    if response.status_code >= 400 and response.status_code != 416:
        response.close()
        hint = _HTTP_HINTS.get(response.status_code, "the server refused the request")
        raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason or ''}".rstrip()
                            + f" ({hint})")
    return response


_TRY_AGAIN = "check the network and the link, and run the same command again"


def _request_error(host: str, url: str, error: requests.exceptions.RequestException, timeout: tuple[float, float],
                   deadline: Deadline) -> DownloadError:
    late = out_of_time(deadline, f"{host}: the answer", _TRY_AGAIN)
    if late is not None:
        return late
    if isinstance(error, requests.exceptions.SSLError):
        return DownloadError(f"{host}: TLS/SSL error ({describe_connection_error(error)})")
    if isinstance(error, requests.exceptions.Timeout):
        return DownloadError(f"{host}: no answer within {timeout[0]:.0f} s; check the network and the link")
    if isinstance(error, requests.exceptions.ConnectionError):
        return DownloadError(f"cannot reach {host}: {describe_connection_error(error)}")
    return DownloadError(f"{url}: {describe_connection_error(error)}")


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


def _drive_confirm_url(response: requests.Response, content: bytes, source: Source) -> str:
    """The URL behind Google Drive's "can't scan this file for viruses" page (*content*)."""
    page = content.decode(response.encoding or "utf-8", errors="replace")
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


def open_source(session: requests.Session, source: Source, start: int, validator: str | None,
                timeout: tuple[float, float], deadline: Deadline) -> requests.Response:
    """The response carrying the file (Drive's confirmation pages followed), from byte *start*.
    *session* runs under *deadline* (toolkit.data.http_deadline.limit_session)."""
    url = source.url
    for _ in range(4):
        response = _get(session, url, start, validator, timeout, deadline)
        if not (source.drive_id and _is_web_page(response)):
            return response
        host = urlsplit(url).netloc
        try:
            page = response.content          # read whole here (and shut if it drips)
        except requests.exceptions.RequestException as error:
            raise _request_error(host, url, error, timeout, deadline) from None
        finally:
            response.close()
        late = out_of_time(deadline, f"{host}: the answer", _TRY_AGAIN)
        if late is not None:
            raise late
        url = _drive_confirm_url(response, page, source)
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


# ---------------------------------------------------------------- the transfer

class Place:
    """The files beside one target folder T: T.part, its state file, the archive kept."""

    def __init__(self, target: Path):
        self.target = target
        self.part = target.with_name(target.name + ".part")
        self.state_file = target.with_name(f".{target.name}.download.json")

    def archive(self, suffix: str) -> Path:
        return self.target.with_name(self.target.name + suffix)

    def read_state(self, key: str) -> dict:
        try:
            state = read_json(self.state_file, "download state file")
        except JsonInputError:               # none, or damaged: a .part of unknown origin is not continued
            state = None
        if not isinstance(state, dict) or state.get("source") != key:   # another URL's leftovers: never continue them
            self.part.unlink(missing_ok=True)
            return {"source": key}
        return state

    def write_state(self, state: dict) -> None:
        temporary = self.state_file.with_name(self.state_file.name + ".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.state_file)


def _sha256_of(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


@dataclass(frozen=True)
class Fetched:
    """A finished transfer: the whole file is in place.part."""

    sha256: str
    downloaded_bytes: int = 0        # bytes fetched by this call
    resumed_from: int = 0            # offset the transfer resumed at (0: from scratch)


def fetch_part(session: requests.Session, source: Source, place: Place, state: dict,
               response: requests.Response | None, expected: str | None, timeout: tuple[float, float],
               show_progress: bool, deadline: Deadline) -> Fetched:
    """Download (or resume) *source* into place.part and check it against the *expected* SHA-256.

    *state* is place's state (read_state), kept up to date for a later resume; *response*, when
    given, is an answer from byte 0 opened before the target was known; *session* runs under
    *deadline* (transfer_deadline)."""
    start = place.part.stat().st_size if place.part.is_file() else 0
    if response is not None and start:
        response.close()    # opened before the target was known: ask again, from the offset
        response = None
    while True:
        if response is None:
            response = open_source(session, source, start, state.get("validator"), timeout, deadline)
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
    resumed_from = downloaded = 0
    with response:
        if start and response.status_code == 416:
            digest, received = _sha256_of(place.part), start
        else:
            if start:
                console.print(f"resuming {escape(place.part.name)} from {human_size(start)}")
                resumed_from = start
            length = response.headers.get("Content-Length")
            if total is None and length and length.isdigit():
                total = start + int(length)
            state["validator"] = _validator(response) or state.get("validator")
            place.write_state(state)
            _warn_if_short_of_disk(place.target.parent, (total or 0) - start)
            digest = _sha256_of(place.part) if start else hashlib.sha256()
            received = _stream(response, place.part, start, total, digest, show_progress, deadline)
            downloaded = received - start
    if total is not None and received != total:
        raise DownloadError(f"the transfer ended after {human_size(received)} of {human_size(total)}; run the same "
                            f"command again to resume ({place.part} is kept)")
    sha256 = digest.hexdigest()
    if expected and sha256 != expected:
        reject(place.part, place, f"checksum mismatch: expected SHA-256 {expected}, got {sha256}; "
                                  "check the --sha256 value and the link")
    return Fetched(sha256, downloaded_bytes=downloaded, resumed_from=resumed_from)


def _stream(response: requests.Response, part: Path, start: int, total: int | None, digest,
            show_progress: bool, deadline: Deadline) -> int:
    """Append the body to *part*; returns its size afterwards. A cut connection, a stall or the
    total limit passing is a DownloadError. Read in pieces of the deadline's least progress, so
    each piece that comes restarts its idle time."""
    received = start
    of = f" of {human_size(total)}" if total else ""
    then = f"run the same command again to resume ({part} is kept)"
    with _progress(show_progress) as progress, open(part, "ab" if start else "wb") as sink:
        task = progress.add_task(escape(part.name.removesuffix(".part")), total=total, completed=start)
        try:
            for chunk in response.raw.stream(deadline.min_progress, decode_content=False):
                sink.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                deadline.progressed(len(chunk))
                progress.update(task, completed=received)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            sink.flush()
            late = out_of_time(deadline, f"the transfer, after {human_size(received)}{of},", then)
            raise late or DownloadError(f"the connection broke after {human_size(received)}{of} "
                                        f"({describe_connection_error(error)}); {then}") from None
    late = out_of_time(deadline, f"the transfer, after {human_size(received)}{of},", then)
    if late is not None:                 # shut while reading a body of unknown length: not all of it
        raise late
    return received


def reject(path: Path, place: Place, message: str) -> None:
    """Rename a file that must not be used to *.bad, forget the state, and raise DownloadError."""
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
