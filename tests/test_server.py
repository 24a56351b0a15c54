"""The server protocol over real HTTP on loopback: the reference scorer, and the client's retries
(urllib3's Retry) against servers that misbehave (500 twice then 200, always 5xx, no answer, a
non-JSON answer, a reply that is not a score, an answer dripped forever, nobody listening). No
test waits between tries (the backoff factor is 0); the dripping ones wait for their 1 s timeout."""
import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from urllib3.exceptions import NewConnectionError

from tests.drip_server import DripServer
from tests.test_tasks import invoke
from toolkit.records.store import Leaderboard
from toolkit.retrieval.metrics import score_submission
from toolkit.submit.client import ServerError, retry_policy, send_and_record, submit_to_server
from toolkit.submit.scorer import ReferenceScorer

ANSWERS = {"query": {f"q{n}.jpg": f"id{n}" for n in range(3)},
           "gallery": {f"g{n:02d}.jpg": f"id{n % 4}" for n in range(16)}}
GALLERY = sorted(ANSWERS["gallery"])


def _submission(shift: int = 0) -> dict:
    """Each query's list is the gallery rotated: some hits at rank 1, some later."""
    return {query: (GALLERY[number + shift:] + GALLERY[:number + shift])[:10]
            for number, query in enumerate(sorted(ANSWERS["query"]))}


@pytest.fixture
def scorer():
    lines = []
    server = ReferenceScorer(ANSWERS, port=0, log=lines.append)
    server.serve_in_background()
    server.lines = lines
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("shift", [0, 3, 7])
def test_a_good_submission_gets_the_competition_score(scorer, shift):
    reply = submit_to_server(scorer.url, "team", _submission(shift), timeout=5)
    assert reply.score == pytest.approx(score_submission(_submission(shift), ANSWERS).score)
    assert reply.status == 200 and reply.tries == 1
    _wait_for_lines(scorer, 1)                 # the scorer logs once its reply is sent: after the client has it
    assert scorer.lines[-1].endswith(f"team: {reply.score:.1f}")


def _reply_to(scorer, **request):
    return requests.post(scorer.url, timeout=5, **request)


@pytest.mark.parametrize("request_kwargs, status, message", [
    ({"data": b"this is not json"}, 400, "not valid JSON"),
    ({"data": b"\xff\xfe\xfa"}, 400, "not UTF-8 text"),
    ({"json": ["a", "list"]}, 400, "JSON object"),
    ({"json": {"images": _submission()}}, 400, '"groupname"'),
    ({"json": {"groupname": "", "images": _submission()}}, 400, '"groupname"'),
    ({"json": {"groupname": "team"}}, 400, '"images"'),
    ({"json": {"groupname": "team", "images": "q0.jpg"}}, 400, '"images"'),
    ({"json": {"groupname": "team", "images": {**_submission(), "q0.jpg": GALLERY[:9]}}}, 422, "9 results, expected 10"),
    ({"json": {"groupname": "team", "images": {**_submission(), "q0.jpg": GALLERY[:9] + ["nope.jpg"]}}}, 422,
     "unknown gallery names ['nope.jpg']"),
    ({"json": {"groupname": "team", "images": {**_submission(), "q0.jpg": [GALLERY[0]] * 10}}}, 422, "repeated"),
    ({"json": {"groupname": "team", "images": {"q0.jpg": GALLERY[:10]}}}, 422, "2 queries missing"),
    ({"json": {"groupname": "team", "images": {**_submission(), "zz.jpg": GALLERY[:10]}}}, 422, "not queries"),
])
def test_a_malformed_body_gets_a_plain_text_reason_and_a_4xx(scorer, request_kwargs, status, message):
    response = _reply_to(scorer, **request_kwargs)
    assert response.status_code == status and message in response.text
    with pytest.raises(ValueError):
        json.loads(response.text)                       # the protocol: an error is not JSON
    assert _reply_to(scorer, json={"groupname": "team", "images": _submission()}).status_code == 200


def test_the_client_reports_the_scorers_reason(scorer):
    with pytest.raises(ServerError, match=r"refused the submission \(HTTP 422\).*9 results, expected 10") as caught:
        submit_to_server(scorer.url, "team", {**_submission(), "q1.jpg": GALLERY[:9]}, timeout=5)
    assert caught.value.status == 422 and caught.value.tries == 1     # a 4xx is not retried


def test_other_paths_and_get(scorer):
    assert requests.post(scorer.url.replace("/retrieval/", "/elsewhere"), json={}, timeout=5).status_code == 404
    assert "reference scorer" in requests.get(scorer.url, timeout=5).text


# --- servers that misbehave ------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *arguments):
        pass

    def _read(self):
        self.server.hits += 1
        return self.rfile.read(int(self.headers["Content-Length"]))

    def _send(self, status, text, kind="text/plain"):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FailsTwice(_Handler):
    def do_POST(self):
        self._read()
        if self.server.hits <= 2:
            self._send(500, "Internal Server Error")
        else:
            self._send(200, json.dumps({"accuracy": 512.5}), "application/json")


class AlwaysFails(_Handler):
    def do_POST(self):
        self._read()
        self._send(500, "scoring failed: database is locked")


class AlwaysUnavailable(_Handler):
    def do_POST(self):
        self._read()
        self._send(503, "<html><h1>503 Service Unavailable</h1></html>", "text/html")


class NeverAnswers(_Handler):
    def do_POST(self):
        self._read()
        self.server.release.wait(10)


class HangsUp(_Handler):
    def do_POST(self):
        self._read()
        self.close_connection = True                    # no status line: the request went out, no answer


class AnswersHtml(_Handler):
    def do_POST(self):
        self._read()
        self._send(200, "<html><body>Group 'team' is not registered</body></html>", "text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def misbehaving(handler):
    server = _Server(("127.0.0.1", 0), handler)
    server.hits, server.release = 0, threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/retrieval/", server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def board(tmp_path):
    with Leaderboard(tmp_path / "board.db") as leaderboard:
        yield leaderboard


def test_two_500s_then_200_are_retried_and_scored(board):
    run = board.add_run(name="cnn-zs", validation_score=400.0, submission_path="/s/a.json")
    with misbehaving(FailsTwice) as (url, server):
        attempt = send_and_record(board, run.id, url, "team", _submission(), timeout=5, retries=3, backoff_factor=0)
    assert server.hits == 3
    assert (attempt.state, attempt.http_status, attempt.server_score, attempt.tries) == ("scored", 200, 512.5, 3)
    assert board.summaries()[0].server_score == 512.5


def test_the_waits_between_tries_are_1_2_4_seconds():
    """urllib3's own formula waits 0, 2, 4 s; the policy's waits are the README's 1, 2, 4 s (capped at 30)."""
    policy, waits = retry_policy(retries=6, backoff_factor=1.0), []
    for _ in range(6):
        policy = policy.increment(method="POST", url="/retrieval/", error=NewConnectionError(None, "refused"))
        waits.append(policy.get_backoff_time())
    assert waits == [1, 2, 4, 8, 16, 30]
    assert policy.tries == [6]                      # the tries counted across the copies Retry makes
    first = retry_policy(3, backoff_factor=0).increment(method="POST", url="/", error=NewConnectionError(None, "x"))
    assert first.get_backoff_time() == 0            # what the tests use: no waiting


@pytest.mark.parametrize("handler, timeout, message, status, hits", [
    (AlwaysFails, 5, "answered HTTP 500 3 times: scoring failed: database is locked", 500, 3),      # retries + 1
    (AlwaysUnavailable, 5, "answered HTTP 503 3 times: <html><h1>503 Service Unavailable", 503, 3),
    (NeverAnswers, 0.5, "did not answer within 0.5s", None, 1),                 # a timeout is not retried
    (HangsUp, 5, "sent no answer (the server closed the connection)", None, 1),         # nor a connection cut once sent
    (AnswersHtml, 5, "the server refused the submission: <html><body>Group 'team' is not registered", 200, 1),
])
def test_a_failed_send_gives_a_clear_message_and_a_recorded_attempt(board, handler, timeout, message, status, hits):
    run = board.add_run(name="cnn-zs", validation_score=400.0, submission_path="/s/a.json")
    with misbehaving(handler) as (url, server):
        with pytest.raises(ServerError) as caught:
            send_and_record(board, run.id, url, "team", _submission(), timeout=timeout, retries=2, backoff_factor=0)
    assert message in str(caught.value) and server.hits == hits
    [attempt] = board.submissions([run.id])
    assert attempt.id == caught.value.submission_id
    assert (attempt.state, attempt.http_status, attempt.url, attempt.group_name) == ("failed", status, url, "team")
    assert message in attempt.error and attempt.tries == hits and attempt.ended_at is not None


def test_nobody_listening_is_retried_then_reported_and_recorded(board):
    run = board.add_run(name="cnn-zs", submission_path="/s/a.json")
    url = f"http://127.0.0.1:{_unused_port()}/retrieval/"
    with pytest.raises(ServerError, match="cannot reach .* after 3 tries .*university network"):
        send_and_record(board, run.id, url, "team", _submission(), timeout=2, retries=2, backoff_factor=0)
    [attempt] = board.submissions([run.id])
    assert attempt.state == "failed" and attempt.tries == 3 and "cannot reach" in attempt.error


# --- replies that are not a score --------------------------------------------------------------------


class Replies(_Handler):
    def do_POST(self):
        self._read()
        self._send(200, self.server.reply, "application/json")


@pytest.mark.parametrize("reply, message", [
    ('{"accuracy": NaN}', "NaN is not a number JSON allows"),
    ('{"accuracy": Infinity}', "Infinity is not a number JSON allows"),
    ('{"accuracy": 1e999}', "too big for a float"),
    ('{"accuracy": true}', '"accuracy" is true, not a score from 0 to 1000'),
    ('{"accuracy": -3}', '"accuracy" is -3, not a score from 0 to 1000'),
    ('{"accuracy": 1000.5}', '"accuracy" is 1000.5, not a score from 0 to 1000'),
    ('{"accuracy": "512"}', '"accuracy" is "512", not a score'),
    ('{"accuracy": null}', '"accuracy" is null, not a score'),
    ('{"accuracy": 1, "accuracy": 2}', "appears more than once"),
])
def test_a_reply_that_is_not_a_real_score_is_a_failed_attempt(board, reply, message):
    run = board.add_run(name="cnn-zs", validation_score=400.0, submission_path="/s/a.json")
    with misbehaving(Replies) as (url, server):
        server.reply = reply
        with pytest.raises(ServerError) as caught:
            send_and_record(board, run.id, url, "team", _submission(), timeout=5, retries=0, backoff_factor=0)
    assert message in str(caught.value) and "unexpected reply from" in str(caught.value)
    [attempt] = board.submissions([run.id])
    assert (attempt.state, attempt.http_status, attempt.server_score) == ("failed", 200, None)
    assert message in attempt.error


@pytest.mark.parametrize("score", [0, 512.5, 1000])
def test_a_real_score_from_0_to_1000_is_taken(score):
    with misbehaving(Replies) as (url, server):
        server.reply = json.dumps({"accuracy": score})
        assert submit_to_server(url, "team", _submission(), timeout=5).score == score


# --- the timeout is for the whole exchange ----------------------------------------------------------


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nX-Slow: ", DripServer.headers(1000, kind="application/json")],
                         ids=["headers", "body"])
def test_a_server_that_drips_forever_is_given_up_on_within_the_timeout(board, head):
    run = board.add_run(name="cnn-zs", submission_path="/s/a.json")
    with DripServer(head, drip=b"a", every=0.1) as server:
        started = time.monotonic()
        with pytest.raises(ServerError, match=r"did not answer within 1s; it may still have scored"):
            send_and_record(board, run.id, server.url("/retrieval/"), "team", _submission(), timeout=1, retries=2,
                            backoff_factor=0)
        waited = time.monotonic() - started
    assert waited < 1 + 10                      # the bound: 1 s of timeout, not one per byte
    assert server.requests == 1                 # an answer that did not come in time is not asked again
    [attempt] = board.submissions([run.id])
    assert attempt.state == "failed" and "did not answer within 1s" in attempt.error


def test_retries_and_their_waits_end_at_the_timeout():
    with misbehaving(AlwaysFails) as (url, server):
        started = time.monotonic()
        with pytest.raises(ServerError, match="answered HTTP 500 1 time: scoring failed"):
            submit_to_server(url, "team", _submission(), timeout=1, retries=3, backoff_factor=4)
        waited = time.monotonic() - started
    assert waited < 1 + 10 and server.hits == 1      # the next try would have started after 4 s


def test_invoke_submit_timeout_bounds_a_dripping_server(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_submission()))
    with DripServer(b"HTTP/1.1 200 OK\r\nX-Slow: ", drip=b"a", every=0.2, for_seconds=90) as server:
        started = time.monotonic()
        result = invoke("submit", "--file", str(path), "--url", server.url("/retrieval/"), "--group", "team",
                        "--timeout", "2")
        waited = time.monotonic() - started
    assert result.returncode == 1 and "did not answer within 2s" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert waited < 60                          # 2 s, plus starting Python and the toolkit on a loaded machine


# --- the reference scorer reads exactly what was announced, and a client that hangs up is quiet ------


def _raw_request(scorer, body: bytes, length: int | None = None, then: str = "half-close",
                 extra: bytes = b"") -> bytes:
    """POST *body* announced as *length* bytes over a raw socket; then half-close (and read the
    reply), hang up at once (returns b""), or just wait for the reply ("wait")."""
    host, port = scorer.server_address[:2]
    with socket.create_connection((host, port), timeout=20) as connection:
        connection.sendall(b"POST /retrieval/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra
                           + f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode() + body)
        if then == "hang up":
            return b""
        if then == "half-close":
            connection.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
        return reply


def _wait_for_lines(scorer, count: int, seconds: float = 30.0) -> None:
    ends = time.monotonic() + seconds
    while len(scorer.lines) < count and time.monotonic() < ends:
        time.sleep(0.02)


def test_a_body_shorter_than_its_content_length_is_refused_and_not_scored(scorer):
    body = json.dumps({"groupname": "team", "images": _submission()}).encode()
    reply = _raw_request(scorer, body, length=len(body) + 100)
    _wait_for_lines(scorer, 1)
    assert reply.startswith(b"HTTP/1.0 400") and f"ended after {len(body):,} of the {len(body) + 100:,} bytes".encode() in reply
    assert not any("team:" in line for line in scorer.lines)


def test_a_client_that_hangs_up_gets_at_most_one_quiet_line(scorer, capfd):
    body = json.dumps({"groupname": "team", "images": _submission()}).encode()
    for _ in range(3):
        _raw_request(scorer, body, length=len(body) + 100, then="hang up")   # short body, then gone
        _raw_request(scorer, body, then="hang up")                           # whole body, gone before the reply
    _wait_for_lines(scorer, 6)
    assert _reply_to(scorer, json={"groupname": "team", "images": _submission()}).status_code == 200
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err and "Error" not in captured.err
    assert len(scorer.lines) <= 7 and not any("\n" in line for line in scorer.lines)
    assert sum("team:" in line for line in scorer.lines) <= 4        # only whole bodies are scored


@pytest.mark.parametrize("body, message", [
    (b'{"groupname": "team", "images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 32 levels"),
    (b'{"groupname": "team", "images": {"q0.jpg": [NaN]}}', "NaN is not a number JSON allows"),
    (b'{"groupname": "team", "groupname": "other", "images": {}}', "appears more than once"),
    (b"this is not json", "not valid JSON"),
])
def test_json_the_scorer_cannot_take_is_a_400_not_a_500(scorer, body, message):
    response = _reply_to(scorer, data=body)
    assert response.status_code == 400 and message in response.text


def test_a_body_over_the_limit_is_413_and_one_that_never_comes_is_408():
    lines = []
    server = ReferenceScorer(ANSWERS, port=0, log=lines.append, max_body_bytes=1000, body_seconds=1)
    server.serve_in_background()
    try:
        big = json.dumps({"groupname": "team", "images": _submission()}).encode() + b" " * 1000
        assert requests.post(server.url, data=big, timeout=10).status_code == 413
        started = time.monotonic()
        reply = _raw_request(server, b'{"groupname": ', length=500, then="wait")      # the rest never comes
        assert reply.startswith(b"HTTP/1.0 408") and b"did not arrive within 1 s" in reply
        assert time.monotonic() - started < 1 + 10
        assert b"not a number of bytes" in _raw_request(server, b"{}", length=0, then="wait",
                                                         extra=b"Content-Length: -5\r\n")
    finally:
        server.shutdown()
        server.server_close()
