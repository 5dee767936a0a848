"""HTTP plumbing of the Stripe emulator: a threading server that hands requests to FakeStripe."""

from __future__ import annotations

import json
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import controls, page

if TYPE_CHECKING:
    from .fake import FakeStripe

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Request Failed",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeStripe) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeStripe/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        try:  # the read-only page, outside the API
            found = page.respond(self.server.fake, self.path)
        except Exception as exc:  # a bug in the page: say so instead of hanging up
            traceback.print_exc(file=sys.stderr)
            found = ("text/plain; charset=utf-8", f"page failed: {exc!r}\n".encode())
            status = 500
        else:
            status = 200
        if found is None:
            self._serve("GET")
            return
        self._read_body()
        content_type, payload = found
        self._write(status, content_type, payload, {"Cache-Control": "no-store"})

    def do_POST(self) -> None:
        try:  # the emulator's controls, outside the API
            found = controls.respond(self.server.fake, self.path)
        except Exception as exc:  # a bug in the fake: say so instead of hanging up
            traceback.print_exc(file=sys.stderr)
            error = {"message": f"control failed: {exc!r}", "type": "api_error"}
            found = (500, json.dumps({"error": error}).encode())
        if found is None:
            self._serve("POST")
            return
        self._read_body()
        status, payload = found
        self._write(status, "application/json", payload, {"Cache-Control": "no-store"})

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self, method: str) -> None:
        body = self._read_body()
        fake = self.server.fake
        try:
            result = fake._handle(method, self.path, self.headers, body)
            if result is None:  # FakeStripe.down: hang up without an answer
                self.close_connection = True
                return
            status, payload, headers = result
            self._write(status, "application/json", payload, headers)
        finally:
            fake._answered()  # webhooks of the events this request emitted go out now

    def _write(
        self, status: int, content_type: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
