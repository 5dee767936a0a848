"""HTTP plumbing of the OpenMeter emulator: a threading server handing requests to the fake."""

from __future__ import annotations

import socket
import time as _time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .common import (
    _num,
    _Problem,
    _problem,
)

if TYPE_CHECKING:
    from .fake import FakeOpenMeter


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    fake: FakeOpenMeter


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake._lock:
            fake.requests.append((self.command, self.path))
            fake.request_headers.append(headers)
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if fake.down:
            self._drop()
            return
        if fake.latency > 0:
            _time.sleep(fake.latency)
        path = urlsplit(self.path).path
        failure = fake._take_failure()
        if failure is not None:
            status, retry_after = failure
            extra = {}
            if status == 429 or retry_after is not None:
                extra["Retry-After"] = _num(retry_after or 0)
            self._send(
                status,
                {"Content-Type": "application/problem+json", **extra},
                _problem(status, f"injected failure ({status})", path),
            )
            return
        try:
            status, extra, payload = fake.handle(self.command, self.path, headers, body)
        except _Problem as problem:
            extra = {"Content-Type": "application/problem+json"}
            if problem.status == 401:
                extra["WWW-Authenticate"] = "Bearer"
            self._send(problem.status, extra, _problem(problem.status, problem.detail, path))
            return
        except Exception as exc:  # a bug in the fake: say so, like a 500 would
            self._send(
                500,
                {"Content-Type": "application/problem+json"},
                _problem(500, f"fake OpenMeter error: {exc!r}", path),
            )
            return
        if payload:
            extra = {"Content-Type": "application/json", **extra}
        self._send(status, extra, payload)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _drop(self) -> None:
        """Close the connection without answering, like a server that went away."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
