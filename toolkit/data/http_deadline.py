"""A deadline on a whole HTTP exchange made with requests: connecting, sending, every read, every retry.

requests' timeout bounds each socket operation, so a server that drips a byte a second never
times out. Under a Deadline, a session given `limit_session` clamps every connect and read timeout
to the time left, and a watcher thread shuts the connections opened under it the moment the time
is up, which ends a read blocked in the middle of a drip. An optional idle limit does the same to
a transfer that brings fewer than `min_progress` bytes in `idle` seconds (a stall), so a long
download that keeps moving runs for as long as its total allows and one that crawls does not.

    with Deadline(30) as deadline:                      # or Deadline(24 * 3600, idle=60)
        session = limit_session(requests.Session(), deadline)
        session.post(url, ...)                          # ends, one way or another, within 30 s
    deadline.expired                                    # None, "total" or "idle"
"""
from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MIN_PROGRESS_BYTES = 64_000
_SHORTEST_TIMEOUT = 0.001           # a socket timeout of 0 would mean "do not block" instead


class Deadline:
    """`seconds` for everything done under it (None: no total limit) and, optionally, at most `idle`
    seconds between two stretches of `min_progress` bytes. Use it as a context manager."""

    def __init__(self, seconds: float | None, idle: float | None = None, min_progress: int = MIN_PROGRESS_BYTES):
        now = time.monotonic()
        self.seconds, self.idle, self.min_progress = seconds, idle, min_progress
        self._total_end = now + seconds if seconds is not None else math.inf
        self._idle_end = now + idle if idle is not None else math.inf
        self._progress = 0
        self._changed = threading.Condition()
        self._connections: list[socket.socket] = []     # duplicates of the sockets opened under it
        self._closed = False
        self._expired: str | None = None                # set by the watcher when it shuts the connections

    @property
    def expired(self) -> str | None:
        """None while time is left; "total" or "idle" once that limit has passed."""
        if self._expired is None:
            now = time.monotonic()
            if now >= self._total_end:
                return "total"
            if now >= self._idle_end:
                return "idle"
        return self._expired

    def left(self) -> float:
        """Seconds until the total limit (inf without one); 0 once any limit has passed."""
        return 0.0 if self.expired else max(0.0, self._total_end - time.monotonic())

    def restart_idle(self) -> None:
        """Something useful arrived (an answer's headers): the idle time starts again."""
        self._progress = 0
        if self.idle is not None:
            self._idle_end = time.monotonic() + self.idle

    def progressed(self, received: int) -> None:
        """*received* more bytes arrived; every min_progress of them restart the idle time."""
        self._progress += received
        if self._progress >= self.min_progress:
            self.restart_idle()

    def watch(self, connection: socket.socket) -> None:
        """Shut *connection* when the deadline passes, or now if it has. A duplicate of its socket
        is kept, so the shutdown reaches it even after TLS has wrapped (and detached) the original."""
        try:
            duplicate = socket.fromfd(connection.fileno(), connection.family, connection.type, connection.proto)
        except OSError:
            return
        with self._changed:
            self._connections.append(duplicate)
            if self.expired:
                _shut(duplicate)

    def __enter__(self) -> "Deadline":
        threading.Thread(target=self._watch, name="http-deadline", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            connections, self._connections = self._connections, []
        for duplicate in connections:
            duplicate.close()

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                now, end = time.monotonic(), min(self._total_end, self._idle_end)
                if now >= end:
                    self._expired = "total" if now >= self._total_end else "idle"
                    for duplicate in self._connections:
                        _shut(duplicate)
                    return
                self._changed.wait(None if math.isinf(end) else end - now)


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def limit_session(session: requests.Session, deadline: Deadline, **adapter_options: Any) -> requests.Session:
    """Mount adapters that put everything *session* does under *deadline* (for http and https;
    *adapter_options* as for requests' HTTPAdapter, e.g. max_retries). Returns the session."""
    adapter = DeadlineAdapter(deadline, **adapter_options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class DeadlineAdapter(HTTPAdapter):
    """requests' HTTPAdapter whose connections are watched by a Deadline and whose timeouts are
    never longer than the time it leaves."""

    def __init__(self, deadline: Deadline, **options: Any):
        self.deadline = deadline
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _watched_pools(self.deadline)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _watched_pools(self.deadline)
        return manager

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        left = self.deadline.left()
        if left <= 0:
            raise requests.exceptions.ConnectTimeout("no time left for the request", request=request)
        return super().send(request, stream=stream, timeout=_clamped(timeout, left), verify=verify, cert=cert,
                            proxies=proxies)


def _clamped(timeout: Any, left: float) -> Any:
    """requests' timeout (None, seconds or (connect, read)) no longer than *left* seconds."""
    if math.isinf(left):
        return timeout
    if isinstance(timeout, tuple):
        return tuple(_clamped_seconds(part, left) for part in timeout)
    return _clamped_seconds(timeout, left)


def _clamped_seconds(value: Any, left: float) -> Any:
    if math.isinf(left):
        return value
    left = max(left, _SHORTEST_TIMEOUT)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(float(value), left)
    return left                         # None (wait forever) or urllib3's "default" marker


def _watched_pools(deadline: Deadline) -> dict[str, type]:
    return {"http": _watched_pool(HTTPConnectionPool, deadline), "https": _watched_pool(HTTPSConnectionPool, deadline)}


def _watched_pool(pool_class: type, deadline: Deadline) -> type:
    """*pool_class* whose connections tell *deadline* about their sockets and never wait past it."""

    class WatchedConnection(pool_class.ConnectionCls):
        def _new_conn(self) -> socket.socket:
            self.timeout = _clamped_seconds(self.timeout, deadline.left())
            connection = super()._new_conn()
            deadline.watch(connection)
            return connection

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            self.timeout = _clamped_seconds(self.timeout, deadline.left())
            return super().getresponse(*args, **kwargs)

    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": WatchedConnection})
