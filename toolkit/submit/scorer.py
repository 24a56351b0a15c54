"""The local reference scorer (`invoke serve-scorer`): the competition server's protocol, the competition's score.

It answers the POST described in `toolkit.submit.client` on the standard library's
ThreadingHTTPServer, scoring with `toolkit.retrieval.metrics.score_submission` against an answers
file {"query": {file: identity}, "gallery": {file: identity}}. A body is read to exactly its
Content-Length, within `body_seconds` and at most `max_body_bytes`, and parsed by
toolkit.data.jsonfile; anything else gets a plain-text reason with a 4xx status (400 for a body
that is short, not JSON, too deep or not the protocol's object; 422 for a submission the checks
refuse), and nothing is scored. A client that hangs up costs one log line; no request can stop it.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from toolkit.data.jsonfile import JsonInputError, parse_json
from toolkit.retrieval.metrics import AnswersError, check_answers, score_submission
from toolkit.submit.submission import SubmissionError, validate_submission

MAX_BODY_BYTES = 16 * 1024 * 1024      # a submission of 50,000 queries is about 15 MB
BODY_SECONDS = 60.0                    # to send the request, headers and body
SCORER_PATHS = ("/retrieval/", "/retrieval", "/")
_HUNG_UP = (ConnectionError, TimeoutError)     # BrokenPipeError, ConnectionResetError, socket timeouts


class RequestRejected(ValueError):
    """A request the scorer will not score: `status` is the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class ReferenceScorer(ThreadingHTTPServer):
    """A local stand-in for the course's server: same protocol, the competition's score.

        scorer = ReferenceScorer(answers, port=0)       # port 0: any free port
        scorer.serve_in_background()                    # or scorer.serve_forever()
        submit_to_server(scorer.url, "team", submission)   # toolkit.submit.client
        scorer.shutdown(); scorer.server_close()
    """

    daemon_threads = True

    def __init__(self, answers: Mapping, host: str = "127.0.0.1", port: int = 3001,
                 log: Callable[[str], None] | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                 body_seconds: float = BODY_SECONDS):
        check_answers(answers)
        self.answers = answers
        self.query_names = sorted(answers["query"])
        self.gallery_names = sorted(answers["gallery"])
        self.log = log
        self.max_body_bytes, self.body_seconds = max_body_bytes, body_seconds
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

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A fault outside the handler's own care (socketserver would print a traceback): one line."""
        error = sys.exc_info()[1]
        if self.log is not None:
            what = "hung up" if isinstance(error, _HUNG_UP) else f"error: {type(error).__name__}: {error}"
            self.log(f"{client_address[0]} {what}")

    def score_body(self, body: bytes) -> tuple[str, float]:
        """(group, score) of a request body, or RequestRejected saying what is wrong with it."""
        try:
            request = parse_json(body, "the body")
        except JsonInputError as error:
            raise RequestRejected(HTTPStatus.BAD_REQUEST, str(error)) from None
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
            self._reply_and_log(rejection.status, str(rejection), "text/plain; charset=utf-8",
                                f"rejected ({rejection.status.value}): {rejection}")
            return
        except ConnectionError:
            self.close_connection = True
            self._log("hung up while sending the request; nothing scored")
            return
        except Exception as error:  # a bug here must not stop the scorer
            self._reply_and_log(HTTPStatus.INTERNAL_SERVER_ERROR, f"scorer error: {type(error).__name__}: {error}",
                                "text/plain; charset=utf-8", f"error: {type(error).__name__}: {error}")
            return
        self._reply_and_log(HTTPStatus.OK, json.dumps({"accuracy": score}), "application/json",
                            f"{group[:80]}: {score:.1f}")

    def do_GET(self) -> None:  # noqa: N802
        self._reply(HTTPStatus.OK, f"reference scorer: POST {{\"groupname\": ..., \"images\": {{...}}}} to {self.server.url}",
                    "text/plain; charset=utf-8")

    def setup(self) -> None:
        self.timeout = self.server.body_seconds     # no read of the request waits longer (socketserver)
        super().setup()

    def _body(self) -> bytes:
        """Exactly Content-Length bytes, all within the server's body_seconds; RequestRejected else."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestRejected(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is needed")
        if not length.strip().isdigit():
            raise RequestRejected(HTTPStatus.BAD_REQUEST, f"Content-Length {length[:20]!r} is not a number of bytes")
        size, limit, seconds = int(length), self.server.max_body_bytes, self.server.body_seconds
        if size > limit:
            raise RequestRejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"the body is {size:,} bytes, more than the {limit:,} this scorer takes")
        ends, body = time.monotonic() + seconds, bytearray()
        while len(body) < size:
            left = ends - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(size - len(body), 1 << 16))
            except TimeoutError:
                raise RequestRejected(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {seconds:g} s "
                                      f"({len(body):,} of {size:,} bytes came); nothing scored") from None
            if not chunk:
                raise RequestRejected(HTTPStatus.BAD_REQUEST, f"the body ended after {len(body):,} of the {size:,} "
                                      "bytes its Content-Length announced; nothing scored")
            body += chunk
        return bytes(body)

    def _reply_and_log(self, status: HTTPStatus, text: str, content_type: str, line: str) -> None:
        """Reply, then log *line*: one line for each request, saying so when the client had gone."""
        delivered = self._reply(status, text, content_type)
        self._log(line if delivered else f"{line} (the client hung up before the reply)")

    def _reply(self, status: HTTPStatus, text: str, content_type: str) -> bool:
        """Send the reply; False when the client has hung up."""
        data = text.encode()
        self.close_connection = True                # the body may not have been read: one request a connection
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except _HUNG_UP:
            return False
        return True

    def _log(self, message: str) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.client_address[0]} {message}")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server name)
        pass  # one line per request through _log instead of http.server's stderr lines
