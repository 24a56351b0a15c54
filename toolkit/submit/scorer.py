"""The local reference scorer (`invoke serve-scorer`): the competition server's protocol, the competition's score.

It answers the POST described in `toolkit.submit.client` on the standard library's
ThreadingHTTPServer, scoring with `toolkit.retrieval.metrics.score_submission` against an answers
file {"query": {file: identity}, "gallery": {file: identity}}. A malformed body gets a plain-text
reason with a 4xx status; no request can stop it.
"""
from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from toolkit.retrieval.metrics import AnswersError, score_submission
from toolkit.submit.submission import SubmissionError, validate_submission

MAX_BODY_BYTES = 64 * 1024 * 1024
SCORER_PATHS = ("/retrieval/", "/retrieval", "/")


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
