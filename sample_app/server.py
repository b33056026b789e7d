"""The sample app: version and revision on `/`, a liveliness probe on `/health/liveliness`.

Env: PORT (default 8080), VERSION or APP_VERSION, REVISION (set by the stand-in,
K_REVISION on Cloud Run), FAIL_HEALTH=1 makes the probe answer 500 so a release's
check stage has something real to catch.

A bad canary whose health endpoints stay green (what only the canary analysis catches):
WORK_MS makes every `/` take that long (the app's "work"); CANARY_FAULTS, e.g.
``5xx=0.05,slow=3,error_logs=0.1``, makes a share of `/` answer 500 (every 20th for 0.05, so
seeded traffic gives exact counts), multiplies the work by ``slow``, and logs a Python
traceback at ERROR for a share of `/` requests (an exception swallowed, but logged). Logs are one JSON object per line
on stdout, the structured form Cloud Run's logging agent reads (severity, message, time).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping


def log(severity: str, message: str, **fields) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    sys.stdout.write(json.dumps({"severity": severity, "message": message, "time": stamp, **fields}) + "\n")
    sys.stdout.flush()


def parse_faults(text: str) -> dict[str, float]:
    """``5xx=0.05,slow=3,error_logs=1`` -> {"5xx": 0.05, "slow": 3.0, "error_logs": 1.0}."""
    faults = {"5xx": 0.0, "slow": 1.0, "error_logs": 0.0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in faults:
            raise ValueError(f"CANARY_FAULTS: unknown fault {key!r} (one of {', '.join(faults)})")
        faults[key] = float(value or 1)
    return faults


def make_handler(env: Mapping[str, str]) -> type[BaseHTTPRequestHandler]:
    version = env.get("VERSION") or env.get("APP_VERSION") or "dev"
    revision = env.get("REVISION") or env.get("K_REVISION") or "local"
    failing = env.get("FAIL_HEALTH") == "1"
    faults = parse_faults(env.get("CANARY_FAULTS", ""))
    work_s = float(env.get("WORK_MS", "0")) * faults["slow"] / 1000
    fail_every = round(1 / faults["5xx"]) if faults["5xx"] > 0 else 0
    log_every = round(1 / faults["error_logs"]) if faults["error_logs"] > 0 else 0
    served = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                with lock:
                    served[0] += 1
                    number = served[0]
                if work_s:
                    time.sleep(work_s)
                if log_every and number % log_every == 0:  # an exception swallowed, but logged
                    log("ERROR", "Traceback (most recent call last):\n  File \"sample_app/server.py\", "
                                 "in do_GET\nsqlite3.OperationalError: database is locked",
                        revision=revision, request=number)
                if fail_every and number % fail_every == 0:
                    self._answer(500, {"error": "internal error", "revision": revision})
                    return
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
    log("INFO", f"serving revision {os.environ.get('K_REVISION', 'local')} on port {server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
