"""HTTP checks against a tiny server on 127.0.0.1; retries run on a fake clock (no real sleeping)."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors.http_check import Backoff, HttpCheckExecutor, bake, check_paths, verdict
from shared.domain.pipeline import parse_pipeline
from shared.testing.fakes import FakeTime


@pytest.fixture(scope="module")
def server():
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/ok":
                status = 200
            elif self.path == "/fail":
                status = 500
            elif self.path.startswith("/flaky"):  # 503 twice, then 200
                status = 503 if hits[self.path] <= 2 else 200
            elif self.path.startswith("/slow-then-ok"):  # the first answer is too slow for the client
                if hits[self.path] == 1:
                    time.sleep(0.6)
                status = 200
            elif self.path.startswith("/sours"):  # healthy for three requests, then 500
                status = 200 if hits[self.path] <= 3 else 500
            elif self.path == "/slow":
                time.sleep(0.2)
                status = 200
            else:
                status = 404
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_all_2xx_pass_at_first_attempt(server):
    url, _ = server
    clock = FakeTime()
    checks = check_paths(url, ["/ok", "ok"], 60, monotonic=clock.monotonic, sleep=clock.sleep)
    assert [(c["path"], c["status"], c["attempts"]) for c in checks] == [("/ok", 200, 1), ("ok", 200, 1)]
    assert all(c["latency_ms"] >= 0 for c in checks) and clock.sleeps == []
    assert verdict(checks) == (Outcome.SUCCEEDED, "")


def test_a_500_is_retried_until_the_window_closes_then_fails(server):
    url, _ = server
    clock = FakeTime()
    checks = check_paths(url, ["/ok", "/fail"], 10, monotonic=clock.monotonic, sleep=clock.sleep,
                         backoff=Backoff(initial_s=0.5, maximum_s=4))
    assert checks[1]["status"] == 500 and checks[1]["attempts"] == 6  # after 0, .5, 1.5, 3.5, 7.5, 10
    assert clock.sleeps == [0.5, 1, 2, 4, 2.5]  # exponential, capped, never past the window
    outcome, reason = verdict(checks)
    assert outcome is Outcome.FAILED and reason == "GET /fail answered 500 after 6 attempt(s)"


def test_flaky_path_passes_after_retries(server):
    url, _ = server
    clock = FakeTime()
    checks = check_paths(url, ["/flaky-1"], 60, monotonic=clock.monotonic, sleep=clock.sleep)
    assert checks[0]["status"] == 200 and checks[0]["attempts"] == 3


def test_slow_then_ok_counts_the_timed_out_attempt(server):
    url, _ = server
    clock = FakeTime()
    checks = check_paths(url, ["/slow-then-ok-1"], 60, monotonic=clock.monotonic, sleep=clock.sleep,
                         backoff=Backoff(request_timeout_s=0.5))
    assert checks[0]["status"] == 200 and checks[0]["attempts"] == 2


def test_latency_is_measured(server):
    url, _ = server
    checks = check_paths(url, ["/slow"], 5)
    assert checks[0]["latency_ms"] >= 200


def test_unreachable_service_fails_naming_the_error():
    clock = FakeTime()
    checks = check_paths("http://127.0.0.1:9", ["/"], 1, monotonic=clock.monotonic, sleep=clock.sleep)
    assert checks[0]["status"] is None and checks[0]["error"] == "ConnectionError"
    assert "failed (ConnectionError)" in verdict(checks)[1]


def _stage(params: dict):
    pipeline = parse_pipeline({"name": "p", "stages": [
        {"id": "deploy", "kind": "deploy", "environment": "staging", "timeout": "10m",
         "params": {"services": ["web"], "traffic_percent": 100}},
        {"id": "smoke", "kind": "check", "timeout": "10m", "params": {"target": "staging", **params}}]})
    return pipeline, pipeline.stage("smoke")


def test_executor_finishes_at_once_with_the_result(server):
    url, _ = server
    clock = FakeTime()
    pipeline, stage = _stage({"url": url, "paths": ["/ok", "/fail"], "window": "3s"})
    executor = HttpCheckExecutor(Settings(), services=None, monotonic=clock.monotonic, sleep=clock.sleep)
    started = executor.start(pipeline, stage, StartStage("r", "smoke", "r.smoke.a1", 1, "check", {"tag": "v1"}))
    assert started.finished.outcome is Outcome.FAILED
    assert started.finished.result["url"] == url
    assert [c["status"] for c in started.finished.result["checks"]] == [200, 500]
    assert clock.t == pytest.approx(3.0)  # the window bounded the retries
    assert executor.poll(pipeline, stage, None) is None


def test_executor_needs_a_service_or_url():
    pipeline, stage = _stage({"paths": ["/"]})
    executor = HttpCheckExecutor(Settings(), services=None)
    with pytest.raises(ExecutorError, match="needs params.service"):
        executor.start(pipeline, stage, StartStage("r", "smoke", "r.smoke.a1", 1, "check", {}))


def test_bake_keeps_checking_until_the_time_is_over(server):
    clock = FakeTime()
    base, _ = server
    baked = bake(base, ["/ok"], 5, interval_s=1, monotonic=clock.monotonic, sleep=clock.sleep)
    assert baked == {"bake_s": 5, "rounds": 5, "failed": ""}


def test_bake_fails_when_the_revision_turns_bad(server):
    clock = FakeTime()
    base, _ = server
    baked = bake(base, ["/sours-1"], 30, interval_s=1, monotonic=clock.monotonic, sleep=clock.sleep)
    assert baked["failed"] == "GET /sours-1 answered 500" and baked["rounds"] == 4
