"""The competition server's protocol: a client that submits, and a local reference scorer.

    POST <url>   e.g. http://tatooine.disi.unitn.it:3001/retrieval/
    body         {"groupname": "<team>", "images": {"<query basename>": ["<gallery basename>", ... 10]}}
    reply        {"accuracy": <score>}; any reply that is not JSON is the server's error message

The client (`submit_to_server`) retries what may pass (a connection that cannot be made, an HTTP
5xx) with exponential backoff, and nothing else: a read timeout is not retried, since the server
may have received and scored the submission. `send_and_record` wraps it with the leaderboard: the
attempt is recorded before it is sent and completed with the outcome, whatever it is.

The reference scorer (`ReferenceScorer`, `invoke serve-scorer`) speaks the same protocol on the
standard library's ThreadingHTTPServer and scores with `toolkit.retrieval.metrics.score_submission` against
an answers file {"query": {file: identity}, "gallery": {file: identity}}. A malformed body gets a
plain-text reason with a 4xx status; no request can stop it.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Mapping

import requests

from toolkit.records.leaderboard import Leaderboard, ServerSubmission
from toolkit.retrieval.metrics import AnswersError, load_answers, score_submission  # noqa: F401 (load_answers re-exported)
from toolkit.submit.submission import SubmissionError, validate_submission

DEFAULT_TIMEOUT = 30.0           # seconds to wait for the server's answer
DEFAULT_RETRIES = 3              # extra tries after a connection error or an HTTP 5xx
BACKOFF_SECONDS = 1.0            # waits 1, 2, 4, ... seconds between tries
MAX_BACKOFF_SECONDS = 30.0
MAX_BODY_BYTES = 64 * 1024 * 1024
SCORER_PATHS = ("/retrieval/", "/retrieval", "/")


class ServerError(RuntimeError):
    """The server could not be reached, did not answer in time, or refused the submission.
    `status` is the last HTTP status (None when no answer came), `reply` the reply's text."""

    def __init__(self, message: str, status: int | None = None, reply: str | None = None, tries: int = 0):
        super().__init__(message)
        self.status, self.reply, self.tries = status, reply, tries
        self.submission_id: int | None = None     # the leaderboard row, set by send_and_record


@dataclass(frozen=True)
class ServerReply:
    score: float
    status: int
    tries: int
    seconds: float


def submit_to_server(url: str, group: str, submission: Mapping[str, list[str]],
                     timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                     backoff: float = BACKOFF_SECONDS) -> ServerReply:
    """POST the submission as `group`; the server's score, or ServerError with a clear message."""
    body = {"groupname": group, "images": dict(submission)}
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            response = requests.post(url, json=body, timeout=timeout)
        except requests.exceptions.ConnectionError as error:   # includes a connect timeout
            if tries <= retries:
                _wait(backoff, tries)
                continue
            raise ServerError(f"cannot reach {url} after {tries} tries ({_reason(error)}); the course server "
                              "answers only from the university network (VPN?), so check that and the URL",
                              tries=tries) from None
        except requests.exceptions.Timeout:
            raise ServerError(f"{url} did not answer within {timeout:g}s; it may still have scored the submission, "
                              "so check before sending it again", tries=tries) from None
        except requests.exceptions.RequestException as error:
            raise ServerError(f"cannot send to {url}: {_reason(error)}", tries=tries) from None
        text = response.text.strip()
        if response.status_code >= 500 and tries <= retries:
            _wait(backoff, tries)
            continue
        return _read_reply(url, response.status_code, text, tries, time.monotonic() - started)


def _read_reply(url: str, status: int, text: str, tries: int, seconds: float) -> ServerReply:
    shown = _shorten(text) or "(empty reply)"
    try:
        reply = json.loads(text)
    except ValueError:
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("accuracy"), (int, float)) and status < 400:
        return ServerReply(score=float(reply["accuracy"]), status=status, tries=tries, seconds=seconds)
    if status >= 500:
        message = f"{url} answered HTTP {status} {tries} times: {shown}"
    elif status >= 400:
        message = f"the server refused the submission (HTTP {status}): {shown}"
    elif reply is None:
        message = f"the server refused the submission: {shown}"
    else:
        message = f'unexpected reply from {url} (no "accuracy"): {shown}'
    raise ServerError(message, status=status, reply=text, tries=tries)


def _wait(backoff: float, tries: int) -> None:
    time.sleep(min(backoff * 2 ** (tries - 1), MAX_BACKOFF_SECONDS))


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Failed to establish a new connection: ", "NameResolutionError"):
        if marker in text:
            return text.split(marker, 1)[1].rstrip("'\")").strip(" :") or text
    return text


def _shorten(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def send_and_record(leaderboard: Leaderboard, run_id: int, url: str, group: str, submission: Mapping[str, list[str]],
                    timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                    backoff: float = BACKOFF_SECONDS) -> ServerSubmission:
    """Send a run's submission; the attempt is recorded in the leaderboard before it is sent and
    completed with the outcome. Returns the ServerSubmission row; raises ServerError (recorded
    first, the row's id in `error.submission_id`) when the server did not score it."""
    attempt = leaderboard.start_submission(run_id, url, group)
    started = time.monotonic()
    try:
        reply = submit_to_server(url, group, submission, timeout=timeout, retries=retries, backoff=backoff)
    except ServerError as error:
        leaderboard.finish_submission(attempt.id, "failed", http_status=error.status, error=str(error),
                                      tries=error.tries, seconds=time.monotonic() - started)
        error.submission_id = attempt.id
        raise
    return leaderboard.finish_submission(attempt.id, "scored", http_status=reply.status, server_score=reply.score,
                                         tries=reply.tries, seconds=reply.seconds)


# --- the reference scorer -----------------------------------------------------------------------


class RequestRejected(ValueError):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class ReferenceScorer(ThreadingHTTPServer):
    """A local stand-in for the course's server: same protocol, the competition's score.

        scorer = ReferenceScorer(answers, port=0)       # port 0: any free port
        scorer.serve_in_background()                    # or scorer.serve_forever()
        submit_to_server(scorer.url, "team", submission)
        scorer.shutdown(); scorer.server_close()
    """

    daemon_threads = True

    def __init__(self, answers: Mapping, host: str = "127.0.0.1", port: int = 3001,
                 log: Callable[[str], None] | None = None):
        self.answers = answers
        self.query_names = sorted(answers["query"])
        self.gallery_names = sorted(answers["gallery"])
        self.log = log
        super().__init__((host, port), _ScorerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/retrieval/"

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="reference-scorer", daemon=True)
        thread.start()
        return thread

    def score_body(self, body: bytes) -> tuple[str, float]:
        """(group, score) of a request body, or RequestRejected saying what is wrong with it."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, ValueError) as error:
            raise RequestRejected(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({error})") from None
        if not isinstance(request, dict):
            raise RequestRejected(HTTPStatus.BAD_REQUEST,
                                  'the body must be a JSON object {"groupname": ..., "images": {...}}')
        group, images = request.get("groupname"), request.get("images")
        if not isinstance(group, str) or not group.strip():
            raise RequestRejected(HTTPStatus.BAD_REQUEST, 'missing "groupname": your team name, a non-empty string')
        if not isinstance(images, dict) or not images:
            raise RequestRejected(HTTPStatus.BAD_REQUEST,
                                  'missing "images": {"<query file>": ["<gallery file>", ... 10]}')
        try:
            validate_submission(images, self.query_names, self.gallery_names)
            return group, score_submission(images, self.answers).score
        except (SubmissionError, AnswersError) as error:
            raise RequestRejected(HTTPStatus.UNPROCESSABLE_ENTITY, str(error)) from None


class _ScorerHandler(BaseHTTPRequestHandler):
    server: ReferenceScorer
    server_version = "retrieval-race-reference-scorer"

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        try:
            if self.path.split("?", 1)[0] not in SCORER_PATHS:
                raise RequestRejected(HTTPStatus.NOT_FOUND, f"no such path {self.path}; POST to /retrieval/")
            group, score = self.server.score_body(self._body())
        except RequestRejected as rejection:
            self._log(f"rejected ({rejection.status.value}): {rejection}")
            self._reply(rejection.status, str(rejection), "text/plain; charset=utf-8")
            return
        except Exception as error:  # a bug here must not stop the scorer
            self._log(f"error: {type(error).__name__}: {error}")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, f"scorer error: {type(error).__name__}: {error}",
                        "text/plain; charset=utf-8")
            return
        self._log(f"{group}: {score:.1f}")
        self._reply(HTTPStatus.OK, json.dumps({"accuracy": score}), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        self._reply(HTTPStatus.OK, f"reference scorer: POST {{\"groupname\": ..., \"images\": {{...}}}} to {self.server.url}",
                    "text/plain; charset=utf-8")

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise RequestRejected(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is needed")
        if int(length) > MAX_BODY_BYTES:
            raise RequestRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(int(length))

    def _reply(self, status: HTTPStatus, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _log(self, message: str) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.client_address[0]} {message}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server name)
        pass  # one line per request through _log instead of http.server's stderr lines
