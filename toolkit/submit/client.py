"""Sending a submission to the competition server, and recording the attempt in the leaderboard.

    POST <url>   e.g. http://tatooine.disi.unitn.it:3001/retrieval/
    body         {"groupname": "<team>", "images": {"<query basename>": ["<gallery basename>", ... 10]}}
    reply        {"accuracy": <score>}; any reply that is not JSON is the server's error message

`send_and_record` records the attempt before it is sent and completes it with the score or the
error text. Connection errors and HTTP 5xx are retried by urllib3's Retry with backoff; a read
timeout, or a connection cut once the request went out, is not: the server may have scored it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Mapping

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util import Retry

from toolkit.data.fetch import describe_connection_error
from toolkit.records.store import Leaderboard, ServerSubmission

DEFAULT_TIMEOUT = 30.0           # seconds to wait for the server's answer
DEFAULT_RETRIES = 3              # extra tries after a connection error or an HTTP 5xx
BACKOFF_FACTOR = 1.0             # waits 1, 2, 4, ... seconds between tries
MAX_BACKOFF_SECONDS = 30.0


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
    itself waits 0, 2, 4 s), and counting the tries in `tries[0]`, shared by the copies it makes."""

    def __init__(self, *args, tries: list[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tries = tries if tries is not None else [0]

    def new(self, **kwargs) -> "_Retry":
        retry = super().new(**kwargs)
        retry.tries = self.tries
        return retry

    def increment(self, *args, **kwargs) -> "_Retry":
        self.tries[0] = len(self.history) + 1        # every try that fails comes through here
        return super().increment(*args, **kwargs)

    def get_backoff_time(self) -> float:
        wait = super().get_backoff_time()
        if not wait and self.history and self.history[-1].redirect_location is None:
            wait = min(self.backoff_max, self.backoff_factor)
        return wait


def retry_policy(retries: int = DEFAULT_RETRIES, backoff_factor: float = BACKOFF_FACTOR) -> _Retry:
    """Up to *retries* extra tries of a POST after a connection error or an HTTP 5xx, waiting
    backoff_factor * 1, 2, 4, ... s (Retry-After ignored: the waits are the ones promised). A read
    error is raised at once; the last 5xx reply is returned rather than raised, to be reported."""
    return _Retry(total=retries, read=False, status_forcelist=range(500, 600), allowed_methods={"POST"},
                  backoff_factor=backoff_factor, backoff_max=MAX_BACKOFF_SECONDS, raise_on_status=False,
                  respect_retry_after_header=False)


def submit_to_server(url: str, group: str, submission: Mapping[str, list[str]],
                     timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                     backoff_factor: float = BACKOFF_FACTOR) -> ServerReply:
    """POST the submission as `group`; the server's score, or ServerError with a clear message."""
    body = {"groupname": group, "images": dict(submission)}
    policy = retry_policy(retries, backoff_factor)
    started = time.monotonic()
    with requests.Session() as session:
        adapter = HTTPAdapter(max_retries=policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            response = session.post(url, json=body, timeout=timeout)
        except requests.exceptions.ConnectionError as error:   # includes a connect timeout
            tries = max(policy.tries[0], 1)
            if not (error.args and isinstance(error.args[0], MaxRetryError)):   # the request had gone out
                raise ServerError(f"{url} sent no answer ({describe_connection_error(error)}); "
                                  "it may still have scored the submission, so check before sending it again",
                                  tries=tries) from None
            raise ServerError(f"cannot reach {url} after {tries} {'try' if tries == 1 else 'tries'} "
                              f"({describe_connection_error(error)}); "
                              "the course server answers only from the university network (VPN?), so check that "
                              "and the URL", tries=tries) from None
        except requests.exceptions.Timeout:
            raise ServerError(f"{url} did not answer within {timeout:g}s; it may still have scored the submission, "
                              "so check before sending it again", tries=max(policy.tries[0], 1)) from None
        except requests.exceptions.RequestException as error:
            raise ServerError(f"cannot send to {url}: {describe_connection_error(error)}",
                              tries=max(policy.tries[0], 1)) from None
        text = response.text.strip()
    tries = len(response.raw.retries.history) + 1 if response.raw.retries is not None else 1
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
        message = f"{url} answered HTTP {status} {tries} time{'' if tries == 1 else 's'}: {shown}"
    elif status >= 400:
        message = f"the server refused the submission (HTTP {status}): {shown}"
    elif reply is None:
        message = f"the server refused the submission: {shown}"
    else:
        message = f'unexpected reply from {url} (no "accuracy"): {shown}'
    raise ServerError(message, status=status, reply=text, tries=tries)


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
