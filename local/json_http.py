"""JSON over HTTP on loopback: the one server the small local endpoints share (the ID-token
issuer, Workload Identity Federation's STS and IAM Credentials)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and keeps quiet in the test output."""

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class LoopbackServer:
    """``handler`` served on 127.0.0.1 at a free port in a daemon thread, until ``close()``."""

    def __init__(self, handler: type[JsonHandler], name: str):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True, name=name).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
