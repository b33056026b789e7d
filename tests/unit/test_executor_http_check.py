"""HTTP checks as scheduled probes against a tiny server on 127.0.0.1.

The probes run through the real ProbeService and RequestsProber; time is a fake clock
that jumps to each scheduled probe, so no test sleeps through a window or a bake."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.adapters.executors.http_check import HttpCheckExecutor
from shared.adapters.http_prober import RequestsProber
from shared.app.probing import ProbeService, follow
from shared.domain.pipeline import parse_pipeline
from shared.domain.probes import IntervalVerdict, ProbeVerdict
from shared.testing.fakes import FakeClock, FakeProbeScheduler, FakePublisher, FakeStore
from shared.testing.probe_runner import run_stage


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


def _stage(params: dict, timeout: str = "10m"):
    pipeline = parse_pipeline({"name": "p", "stages": [
        {"id": "deploy", "kind": "deploy", "environment": "staging", "timeout": "10m",
         "params": {"services": ["web"], "traffic_percent": 100}},
        {"id": "smoke", "kind": "check", "timeout": timeout, "params": {"target": "staging", **params}}]})
    return pipeline, pipeline.stage("smoke")


class Probing:
    """A check started by the executor, then its probes run one by one at their times."""

    def __init__(self, params: dict, analyse=None):
        self.pipeline, self.stage = _stage(params)
        self.clock = FakeClock()
        self.scheduler = FakeProbeScheduler()
        self.publisher = FakePublisher()
        self.store = FakeStore()
        self.store.save_pipeline(self.pipeline)
        self.executor = HttpCheckExecutor(Settings(), services=None)
        kwargs = {"analyse": analyse} if analyse else {}
        self.service = ProbeService(self.store, {"check": self.executor}, self.publisher, self.scheduler,
                                    RequestsProber(), self.clock, Settings(), **kwargs)
        self.probe_times: list[float] = []

    def run(self) -> dict:
        self.t0 = self.clock.now()

        def advance(seconds: float) -> None:
            self.clock.advance(seconds)

        original = self.service.handle

        def handle(task):  # note when each probe ran
            self.probe_times.append(round(self.clock.now() - self.t0, 3))
            return original(task)

        self.service.handle = handle
        command = StartStage("r", "smoke", "r.smoke.a1", 1, "check", {"tag": "v1"})
        return run_stage(self.service, self.scheduler, self.executor, self.pipeline, command, advance=advance)


def test_all_2xx_pass_at_the_first_probe(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/ok", "/slow"]})
    finish = probing.run()
    assert finish["outcome"] == "succeeded" and finish["stage_run_id"] == "r.smoke.a1"
    assert [(c["path"], c["status"], c["attempts"]) for c in finish["result"]["checks"]] == [("/ok", 200, 1), ("/slow", 200, 1)]
    assert all(c["latency_ms"] >= 0 for c in finish["result"]["checks"])
    assert probing.probe_times == [0.0]


def test_a_500_is_retried_until_the_window_closes_then_fails(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/ok", "/fail"], "window": "10s"})
    finish = probing.run()
    # Only the failing path is asked again; the gaps back off (0.5, 1, 2, 4) and never pass the window.
    assert probing.probe_times == [0.0, 0.5, 1.5, 3.5, 7.5, 10.0]
    assert finish["outcome"] == "failed" and finish["reason"] == "GET /fail answered 500 after 6 attempt(s)"
    assert [c["attempts"] for c in finish["result"]["checks"]] == [1, 6]


def test_flaky_path_passes_after_retries(server):
    url, _ = server
    finish = Probing({"url": url, "paths": ["/flaky-1"]}).run()
    assert finish["outcome"] == "succeeded" and finish["result"]["checks"][0]["attempts"] == 3


def test_unreachable_service_fails_naming_the_error():
    finish = Probing({"url": "http://127.0.0.1:9", "paths": ["/"], "window": "1s"}).run()
    assert finish["outcome"] == "failed" and "failed (ConnectionError)" in finish["reason"]


def test_executor_needs_a_service_or_url():
    pipeline, stage = _stage({"paths": ["/"]})
    executor = HttpCheckExecutor(Settings(), services=None)
    with pytest.raises(ExecutorError, match="needs params.service"):
        executor.start(pipeline, stage, StartStage("r", "smoke", "r.smoke.a1", 1, "check", {}))


def test_bake_probes_every_interval_until_the_time_is_over(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/ok"], "bake": "20s", "probe_interval": "5s"})
    finish = probing.run()
    assert finish["outcome"] == "succeeded"
    assert probing.probe_times == [0.0, 5.0, 10.0, 15.0, 20.0]  # one short call each, nobody waits between
    assert finish["result"]["bake"] == {"bake_s": 20, "rounds": 4, "failed": ""}


def test_bake_fails_when_the_revision_turns_bad(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/sours-1"], "bake": "60s", "probe_interval": "5s"})
    finish = probing.run()
    assert finish["outcome"] == "failed" and finish["reason"] == "GET /sours-1 answered 500 during the 60s bake"
    assert finish["result"]["bake"]["rounds"] == 3 and probing.probe_times[-1] == 15.0


def test_each_probe_interval_calls_the_analysis_and_its_fail_ends_the_bake(server):
    url, _ = server
    seen = []

    def analyse(check, interval):
        seen.append((interval.phase, interval.end - interval.start, [p["status"] for p in interval.probes]))
        if len(seen) == 3:
            return IntervalVerdict(ProbeVerdict.FAIL, "error rate 7 % > 5 %")
        return IntervalVerdict(ProbeVerdict.PASS, "error rate 0 %")

    finish = Probing({"url": url, "paths": ["/ok"], "bake": "60s", "probe_interval": "10s"}, analyse).run()
    assert seen == [("window", 0.0, [200]), ("bake", 10.0, [200]), ("bake", 10.0, [200])]
    assert finish["outcome"] == "failed" and finish["reason"] == "analysis failed the bake: error rate 7 % > 5 %"
    assert finish["result"]["analysis"]["fails"] == 1 and finish["result"]["analysis"]["passes"] == 2


def test_a_bake_that_is_inconclusive_throughout_fails_with_the_evidence(server):
    url, _ = server
    finish = Probing({"url": url, "paths": ["/ok"], "bake": "10s", "probe_interval": "5s"},
                     lambda check, interval: IntervalVerdict(ProbeVerdict.INCONCLUSIVE, "no log entries")).run()
    assert finish["outcome"] == "failed"
    assert finish["reason"].startswith("analysis was inconclusive for every interval") and "no log entries" in finish["reason"]


def test_a_probe_after_the_stage_deadline_publishes_nothing(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/fail"], "window": "30s"})
    command = StartStage("r", "smoke", "r.smoke.a1", 1, "check", {})
    handle = probing.executor.start(probing.pipeline, probing.stage, command).handle
    task = follow(probing.scheduler, release_id="r", stage="smoke", stage_run_id="r.smoke.a1", kind="check",
                  pipeline_digest=probing.pipeline.digest, timeout_s=10, handle=handle, now=probing.clock.now())
    probing.clock.advance(11)
    assert "deadline" in probing.service.handle(task)
    assert probing.publisher.messages == [] and probing.scheduler.take_due(probing.clock.now() + 100) == [task]


def test_a_refused_next_probe_fails_the_check_naming_why(server):
    url, _ = server
    probing = Probing({"url": url, "paths": ["/fail"], "window": "10s"})
    first = probing.scheduler.schedule

    def refuse_after_the_first(task, at):
        if task.seq > 0:
            raise ExecutorError("scheduling probe: missing permission cloudtasks.tasks.create")
        return first(task, at)

    probing.scheduler.schedule = refuse_after_the_first
    finish = probing.run()
    assert finish["outcome"] == "failed" and "cannot be followed" in finish["reason"]
    assert "cloudtasks.tasks.create" in finish["reason"] and probing.probe_times == [0.0]
