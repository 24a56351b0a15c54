"""A real HTTP server on loopback for the download tests: ranges, cut connections, Drive pages.

    with ArchiveServer() as server:
        server.files["/comp.zip"] = data
        server.cut_after = 50_000          # the next file response stops after 50,000 bytes
        download(server.url("/comp.zip"), ...)
        server.requests                    # [(path, headers), ...] as received

Google Drive is imitated at /uc?export=download&id=<id>: the first answer is the HTML warning
page ("can't scan this file for viruses") carrying a form with confirm/uuid fields (or, with
drive_style="link", an old-style 'confirm=' link); the follow-up request gets the file with a
Content-Disposition name. server.drive_files maps ids to (file name, bytes).
"""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *arguments):  # keep the test output clean
        pass

    def do_GET(self):
        state: ArchiveServer = self.server.state
        state.requests.append((self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        if parts.path == "/uc" and query.get("id") in state.drive_files:
            if query.get("confirm") == state.drive_token:   # old style: the confirm link leads back here
                return self._file(*state.drive_files[query["id"]])
            return self._warning_page(query["id"])
        if parts.path == "/download" and query.get("id") in state.drive_files:
            if query.get("confirm") == "t" and query.get("uuid") == state.drive_uuid:
                return self._file(*state.drive_files[query["id"]])
            return self._send(400, b"missing confirm/uuid", "text/plain")
        if parts.path in state.files:
            return self._file(None, state.files[parts.path])
        self._send(404, b"<html><body>Not Found</body></html>", "text/html")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _warning_page(self, file_id: str):
        state: ArchiveServer = self.server.state
        if state.drive_style == "link":
            body = (f'<html><body><p>Google Drive can\'t scan this file for viruses.</p>'
                    f'<a id="uc-download-link" href="/uc?export=download&amp;confirm={state.drive_token}'
                    f'&amp;id={file_id}">Download anyway</a></body></html>')
        else:
            body = (f'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                    f'<p>Google Drive can\'t scan this file for viruses.</p>'
                    f'<form id="download-form" action="{state.url("/download")}" method="get">'
                    f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    f'<input type="hidden" name="export" value="download">'
                    f'<input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{state.drive_uuid}"></form></body></html>')
        self._send(200, body.encode(), "text/html; charset=utf-8")

    def _file(self, name: str | None, data: bytes):
        state: ArchiveServer = self.server.state
        status, start, extra = 200, 0, {"ETag": '"' + hashlib.md5(data).hexdigest() + '"'}
        if state.ranges:
            extra["Accept-Ranges"] = "bytes"
        if name:
            extra["Content-Disposition"] = f'attachment; filename="{name}"'
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if wanted and state.ranges:
            start = int(wanted.group(1))
            if start >= len(data):
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if state.cut_after is not None:
            cut, state.cut_after = state.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class ArchiveServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drive_files: dict[str, tuple[str, bytes]] = {}
        self.drive_style = "form"
        self.drive_token = "Xy12"
        self.drive_uuid = "0b5c6b1e-uuid"
        self.ranges = True
        self.cut_after: int | None = None
        self.requests: list[tuple[str, dict]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.state = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def range_requests(self) -> list[str]:
        return [headers["Range"] for _, headers in self.requests if "Range" in headers]

    def __enter__(self) -> "ArchiveServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()
