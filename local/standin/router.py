"""The HTTP front of a stand-in Cloud Run service: weighted traffic split across revisions.

One router per service URL (random pick weighted by the traffic percents) and one
per traffic tag (always the tagged revision). A revision whose process does not
answer yields a 503 here, as Cloud Run would, so health checks see the failure.
"""
from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Backend:
    revision: str
    port: int | None  # None: a non-local revision; the router answers for it


class Router:
    def __init__(self, label: str, on_served: Callable[[str, int, float], None] | None = None,
                 gate: Callable[[BaseHTTPRequestHandler, str], tuple[int, str] | None] | None = None) -> None:
        self.label = label
        self._gate = gate  # (request, this router's URL) -> a refusal (status, text), e.g. Cloud Run's IAM check
        self._on_served = on_served  # (revision, status, latency ms) of each answered request: the metrics
        self._routes: list[tuple[Backend, int]] = []
        self._lock = threading.Lock()
        self._random = random.Random()
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                router._forward(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"router-{label}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_routes(self, routes: list[tuple[Backend, int]]) -> None:
        """``routes``: (backend, percent) pairs; zero-percent entries are never picked."""
        with self._lock:
            self._routes = [(b, p) for b, p in routes if p > 0]

    def pick(self) -> Backend | None:
        with self._lock:
            if not self._routes:
                return None
            backends, weights = zip(*self._routes)
            return self._random.choices(backends, weights=weights)[0]

    def _forward(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        refusal = self._gate(request, self.url) if self._gate is not None else None
        if refusal is not None:  # refused before any revision sees it
            return _answer_text(request, *refusal)
        backend = self.pick()
        if backend is None:
            return _answer(request, 404, {"error": f"no traffic is routed to {self.label}"}, None)
        if backend.port is None:
            return _answer(request, 200, {"revision": backend.revision, "served_by": "stand-in"}, backend.revision)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=30)
        started = time.monotonic()
        try:
            conn.request(request.command, request.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            self._served(backend.revision, 503, started)
            return _answer(request, 503, {"error": f"revision {backend.revision} is not answering: {exc}"},
                           backend.revision)
        finally:
            conn.close()
        self._served(backend.revision, response.status, started)
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.send_header("X-Serving-Revision", backend.revision)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)

    def _served(self, revision: str, status: int, started: float) -> None:
        if self._on_served is not None:
            self._on_served(revision, status, (time.monotonic() - started) * 1000)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _answer(request: BaseHTTPRequestHandler, status: int, body: dict, revision: str | None) -> None:
    payload = json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    if revision:
        request.send_header("X-Serving-Revision", revision)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(payload)


def _answer_text(request: BaseHTTPRequestHandler, status: int, text: str) -> None:
    payload = text.encode()
    request.send_response(status)
    request.send_header("Content-Type", "text/html; charset=UTF-8")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(payload)
