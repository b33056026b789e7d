"""The sample app: version and revision on `/`, a liveliness probe on `/health/liveliness`.

Env: PORT (default 8080), VERSION or APP_VERSION, REVISION (set by the stand-in,
K_REVISION on Cloud Run), FAIL_HEALTH=1 makes the probe answer 500 so a release's
check stage has something real to catch.
"""
from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping


def make_handler(env: Mapping[str, str]) -> type[BaseHTTPRequestHandler]:
    version = env.get("VERSION") or env.get("APP_VERSION") or "dev"
    revision = env.get("REVISION") or env.get("K_REVISION") or "local"
    failing = env.get("FAIL_HEALTH") == "1"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._answer(200, {"version": version, "revision": revision})
            elif path == "/health/liveliness":
                if failing:
                    self._answer(500, {"status": "failing", "revision": revision})
                else:
                    self._answer(200, {"status": "ok"})
            else:
                self._answer(404, {"error": f"no route {path}"})

        def _answer(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # requests are counted by the caller, not logged
            pass

    return Handler


def make_server(env: Mapping[str, str], port: int | None = None) -> ThreadingHTTPServer:
    port = int(env.get("PORT", "8080")) if port is None else port
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(env))
    server.daemon_threads = True
    return server


def main() -> None:
    server = make_server(os.environ)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
