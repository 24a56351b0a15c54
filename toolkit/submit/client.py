"""Sending a submission to the competition server, and recording the attempt in the leaderboard.

    POST <url>   e.g. http://tatooine.disi.unitn.it:3001/retrieval/
    body         {"groupname": "<team>", "images": {"<query basename>": ["<gallery basename>", ... 10]}}
    reply        {"accuracy": <score>}; any reply that is not JSON is the server's error message

`send_and_record` records the attempt before it is sent and completes it with the score or the
error text. Connection errors and HTTP 5xx are retried by urllib3's Retry with backoff; a read
timeout, or a connection cut once the request went out, is not: the server may have scored it.
The timeout bounds the whole exchange (toolkit.data.http_deadline): connecting, sending, every
read and every retry, so a server that drips its answer is given up on in time. A score is a
finite number from 0 to 1000 (not true or NaN); any other reply is a failed attempt.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Mapping

import requests
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util import Retry

from toolkit.data.fetch import describe_connection_error
from toolkit.data.http_deadline import Deadline, limit_session
from toolkit.data.jsonfile import JsonInputError, parse_json
from toolkit.records.store import Leaderboard, ServerSubmission
from toolkit.retrieval.metrics import competition_score

DEFAULT_TIMEOUT = 30.0           # seconds the whole exchange may take, retries included
DEFAULT_RETRIES = 3              # extra tries after a connection error or an HTTP 5xx
BACKOFF_FACTOR = 1.0             # waits 1, 2, 4, ... seconds between tries
MAX_BACKOFF_SECONDS = 30.0
MAX_REPLY_BYTES = 1024 * 1024    # the score is a few bytes; an error page a few thousand
BEST_SCORE = competition_score(1.0, 1.0, 1.0)


class ServerError(RuntimeError):
    """The server could not be reached, did not answer in time, or refused the submission.
    `status` is the last HTTP status (None when no answer came), `reply` the reply's text."""

    def __init__(self, message: str, status: int | None = None, reply: str | None = None, tries: int = 0):
        super().__init__(message)
        self.status, self.reply, self.tries = status, reply, tries
        self.submission_id: int | None = None     # the leaderboard row, set by send_and_record


@dataclass(frozen=True)
class ServerReply:
    """The server's score, its HTTP status, the tries it took and the seconds they took."""

    score: float
    status: int
    tries: int
    seconds: float


class _Retry(Retry):
    """urllib3's Retry, waiting backoff_factor before the first retry too (1, 2, 4 s where urllib3
    itself waits 0, 2, 4 s), counting the tries in `tries[0]`, shared by the copies it makes, and
    trying no more once the wait before the next try would reach past the deadline."""

    def __init__(self, *args, tries: list[int] | None = None, deadline: Deadline | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tries = tries if tries is not None else [0]
        self.deadline = deadline

    def new(self, **kwargs) -> "_Retry":
        retry = super().new(**kwargs)
        retry.tries, retry.deadline = self.tries, self.deadline
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None) -> "_Retry":
        self.tries[0] = len(self.history) + 1        # every try that fails comes through here
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.deadline is not None and self.deadline.left() <= retry.get_backoff_time():
            raise MaxRetryError(_pool, url, error or ResponseError("no time left for another try"))
        return retry

    def get_backoff_time(self) -> float:
        wait = super().get_backoff_time()
        if not wait and self.history and self.history[-1].redirect_location is None:
            wait = min(self.backoff_max, self.backoff_factor)
        return wait


def retry_policy(retries: int = DEFAULT_RETRIES, backoff_factor: float = BACKOFF_FACTOR,
                 deadline: Deadline | None = None) -> _Retry:
    """Up to *retries* extra tries of a POST after a connection error or an HTTP 5xx, waiting
    backoff_factor * 1, 2, 4, ... s (Retry-After ignored: the waits are the ones promised), none
    that would start after *deadline*. A read error is raised at once; the last 5xx reply is
    returned rather than raised, to be reported."""
    return _Retry(total=retries, read=False, status_forcelist=range(500, 600), allowed_methods={"POST"},
                  backoff_factor=backoff_factor, backoff_max=MAX_BACKOFF_SECONDS, raise_on_status=False,
                  respect_retry_after_header=False, deadline=deadline)


def submit_to_server(url: str, group: str, submission: Mapping[str, list[str]],
                     timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                     backoff_factor: float = BACKOFF_FACTOR) -> ServerReply:
    """POST the submission as `group`; the server's score, or ServerError with a clear message.
    *timeout* is for the whole exchange: connecting, sending, every read and every retry."""
    body = {"groupname": group, "images": dict(submission)}
    started = time.monotonic()
    with Deadline(timeout) as deadline, requests.Session() as session:
        policy = retry_policy(retries, backoff_factor, deadline)
        limit_session(session, deadline, max_retries=policy)
        try:
            response = session.post(url, json=body, timeout=timeout, stream=True)
            text = _reply_text(response)
            if deadline.expired:       # the connection was shut mid-answer: what came is not all of it
                raise requests.exceptions.ReadTimeout(f"no complete answer within {timeout:g}s")
        except requests.exceptions.RequestException as error:
            raise _failure(url, error, max(policy.tries[0], 1), deadline, timeout) from None
    tries = len(response.raw.retries.history) + 1 if response.raw.retries is not None else 1
    return _read_reply(url, response.status_code, text, tries, time.monotonic() - started)


def _reply_text(response: requests.Response) -> str:
    """The reply's text, at most MAX_REPLY_BYTES of it."""
    with response:
        data = bytearray()
        for chunk in response.iter_content(64 * 1024):
            data += chunk
            if len(data) > MAX_REPLY_BYTES:
                break
    return bytes(data[:MAX_REPLY_BYTES]).decode(response.encoding or "utf-8", errors="replace").strip()


def _failure(url: str, error: requests.exceptions.RequestException, tries: int, deadline: Deadline,
             timeout: float) -> "ServerError":
    """The ServerError for a request that got no complete answer."""
    if isinstance(error, requests.exceptions.ConnectionError) and error.args and isinstance(error.args[0], MaxRetryError):
        # no try got as far as sending the request (urllib3 raises read errors at once)
        return ServerError(f"cannot reach {url} after {tries} {'try' if tries == 1 else 'tries'} "
                           f"({describe_connection_error(error)}); "
                           "the course server answers only from the university network (VPN?), so check that "
                           "and the URL", tries=tries)
    if deadline.expired or isinstance(error, requests.exceptions.Timeout):
        return ServerError(f"{url} did not answer within {timeout:g}s; it may still have scored the submission, "
                           "so check before sending it again", tries=tries)
    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        return ServerError(f"{url} sent no answer ({describe_connection_error(error)}); "
                           "it may still have scored the submission, so check before sending it again", tries=tries)
    return ServerError(f"cannot send to {url}: {describe_connection_error(error)}", tries=tries)


def _read_reply(url: str, status: int, text: str, tries: int, seconds: float) -> ServerReply:
    shown = _shorten(text) or "(empty reply)"
    try:
        reply, problem = parse_json(text, url), None
    except JsonInputError as error:
        reply, problem = None, str(error)
    score = _score(reply)
    if score is not None and status < 400:
        return ServerReply(score=score, status=status, tries=tries, seconds=seconds)
    if status >= 500:
        message = f"{url} answered HTTP {status} {tries} time{'' if tries == 1 else 's'}: {shown}"
    elif status >= 400:
        message = f"the server refused the submission (HTTP {status}): {shown}"
    elif problem is not None and text[:1] in ("{", "["):
        message = f"unexpected reply from {problem}: {shown}"
    elif problem is not None:                            # the protocol: text that is not JSON is an error
        message = f"the server refused the submission: {shown}"
    elif isinstance(reply, dict) and "accuracy" in reply:
        message = (f'unexpected reply from {url}: "accuracy" is {_shorten(json.dumps(reply["accuracy"]), 80)}, '
                   f"not a score from 0 to {BEST_SCORE:g}")
    else:
        message = f'unexpected reply from {url} (no "accuracy"): {shown}'
    raise ServerError(message, status=status, reply=text, tries=tries)


def _score(reply: object) -> float | None:
    """The reply's "accuracy" when it is a real number from 0 to the best score, else None."""
    value = reply.get("accuracy") if isinstance(reply, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value <= BEST_SCORE else None


def _shorten(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def send_and_record(leaderboard: Leaderboard, run_id: int, url: str, group: str, submission: Mapping[str, list[str]],
                    timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                    backoff_factor: float = BACKOFF_FACTOR) -> ServerSubmission:
    """Send a run's submission; the attempt is recorded in the leaderboard before it is sent and
    completed with the outcome. Returns the ServerSubmission row; raises ServerError (recorded
    first, the row's id in `error.submission_id`) when the server did not score it."""
    attempt = leaderboard.start_submission(run_id, url, group)
    started = time.monotonic()
    try:
        reply = submit_to_server(url, group, submission, timeout=timeout, retries=retries,
                                 backoff_factor=backoff_factor)
    except ServerError as error:
        leaderboard.finish_submission(attempt.id, "failed", http_status=error.status, error=str(error),
                                      tries=error.tries, seconds=time.monotonic() - started)
        error.submission_id = attempt.id
        raise
    return leaderboard.finish_submission(attempt.id, "scored", http_status=reply.status, server_score=reply.score,
                                         tries=reply.tries, seconds=reply.seconds)
