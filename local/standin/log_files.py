"""The log files the stand-in writes (build steps, job executions, revisions), and a small
read-only HTTP server on loopback that serves exactly those files, so the dashboard and the
approval page can link to a stage's log.

On GCP the links are console pages: the Build proto's ``log_url`` is "URL to logs for this
build in Google Cloud Console." and the Cloud Run v2 Execution's ``log_uri`` "URI where logs for
this execution can be found in Cloud Console." (cloudbuild.proto, google/cloud/run/v2/execution.proto).
Locally there is no console, and a ``file://`` link is one a web page cannot open, so the
stand-in answers with ``http://127.0.0.1:PORT/logs/KIND/NAME`` instead.

Only files the stand-in registered when it created the build, execution or revision are
served: a request names a (kind, name) pair, and the server looks that pair up in its own table;
it never turns a request path into a file path, so ``..``, encoded dots, absolute paths or a
file that is merely in the log folder all answer 404. GET and HEAD only.
"""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KINDS = ("builds", "executions", "revisions")
# Build ids are UUIDs, execution and revision ids Cloud Run resource ids: no '/', no leading dot.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
# A log served whole up to this size; beyond it the end, which holds the failure.
MAX_BYTES = 4 * 1024 * 1024


class LogFiles:
    def __init__(self, log_dir: Path, port: int = 0) -> None:
        self._dir = log_dir
        self._port = port
        self._files: dict[str, Path] = {}  # "/logs/KIND/NAME" -> the file
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def path(self, kind: str, name: str) -> Path:
        """The file a build, execution or revision writes its log to; from now on it is served."""
        if kind not in KINDS or not NAME.match(name):
            raise ValueError(f"no log file for {kind!r}/{name!r}")
        file = self._dir / kind / f"{name}.log"
        with self._lock:
            self._files[f"/logs/{kind}/{name}"] = file
        return file

    def url(self, kind: str, name: str) -> str:
        """The http:// link to the log of ``kind``/``name`` (registers it like ``path``)."""
        self.path(kind, name)
        if self._server is None:
            raise RuntimeError("the log server is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/logs/{kind}/{name}"

    def read(self, request_path: str) -> bytes | None:
        """The served bytes for a request path, or None when it names no registered log."""
        with self._lock:
            file = self._files.get(request_path.split("?", 1)[0])
        if file is None:
            return None
        try:
            with file.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - MAX_BYTES))
                data = f.read()
        except FileNotFoundError:
            return b""  # registered, nothing written yet (a queued build)
        return data if size <= MAX_BYTES else b"[... earlier output left out ...]\n" + data

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}" if self._server else ""

    def start(self) -> None:
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(with_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(with_body=False)

            def _refuse_write(self) -> None:
                self._send(405, b"read-only: GET or HEAD\n", True, {"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_write  # noqa: N815

            def _answer(self, with_body: bool) -> None:
                data = files.read(self.path)
                if data is None:
                    self._send(404, b"no such log\n", with_body)
                else:
                    self._send(200, data, with_body)

            def _send(self, status: int, body: bytes, with_body: bool, extra: dict | None = None) -> None:
                self.send_response(status)
                # Plain text, never sniffed or run as a page: a log may hold anything a step printed.
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", "default-src 'none'; sandbox")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="standin-logs", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
