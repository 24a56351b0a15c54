"""A loopback server that drips: it reads the request, sends `head`, then one `drip` every `every`
seconds until the client hangs up or `for_seconds` pass (a bound, so that a client that never
gives up fails its test instead of hanging it).

    with DripServer(b"HTTP/1.1 200 OK\\r\\nX-Slow: ", drip=b"a") as server:    # headers that never end
        submit_to_server(server.url("/retrieval/"), ...)
    with DripServer(DripServer.headers(10**9), drip=b"x" * 70_000, every=0.2) as server:   # slow, not stalled
        ...
"""
from __future__ import annotations

import socketserver
import threading
import time


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        server: DripServer = self.server.owner
        length = 0
        while True:                                          # the request's headers
            line = self.rfile.readline(65537)
            if not line or line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        self.rfile.read(length)
        server.requests += 1
        ends = time.monotonic() + server.for_seconds
        try:
            self.wfile.write(server.head)
            self.wfile.flush()
            while time.monotonic() < ends and not server.stopped.is_set():
                self.wfile.write(server.drip)
                self.wfile.flush()
                server.stopped.wait(server.every)
        except OSError:                                      # the client gave up: what the tests want
            server.hung_up += 1


class DripServer:
    def __init__(self, head: bytes, drip: bytes = b"x", every: float = 0.1, for_seconds: float = 40.0):
        self.head, self.drip, self.every, self.for_seconds = head, drip, every, for_seconds
        self.requests = self.hung_up = 0
        self.stopped = threading.Event()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self

    @staticmethod
    def headers(length: int, status: str = "200 OK", kind: str = "application/octet-stream") -> bytes:
        """A complete status line and headers announcing a body of *length* bytes."""
        return (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n").encode()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> "DripServer":
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.stopped.set()
        self._server.shutdown()
        self._server.server_close()
