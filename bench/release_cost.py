"""Benchmark 9: what one release costs, with a 2 h wait for its approval.

One release of the shipped noesis2 flow (17 stages, its prod smoke baking 5 minutes),
in-process on the Firestore emulator with the real services: PushService, Dispatcher,
ApprovalService (signed link, GET confirm page, POST approve), EnvironmentLocks over
``apps/{app}``, ProbeService, the sweeper. Time is a fake clock, so the 2 h wait and the
5-minute bake take no real time; the sweeper runs once per simulated minute, as Cloud
Scheduler would. Work takes no time: builds end at once (their Cloud Build
notification stands in for three on GCP: QUEUED, WORKING, SUCCESS), jobs, rollouts and
traffic changes are over at their first probe, checks GET a local server answering 200.

Counted: every Firestore document read and write (releases, apps, approvals,
deliveries, pipelines), each function invocation and its wall time (function-seconds;
"billed" rounds each up to 100 ms, Cloud Run's billing unit,
https://cloud.google.com/run/pricing), Pub/Sub messages and Cloud Tasks.
The sweeper's empty query on a quiet minute costs one read per minute for the whole
system, not per release: shown apart.
"""
from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from bench.common import APPROVAL_KEYS, PROJECT, CountingStore, bench_keyring, Report, emulators, prefix, print_report, quiet

WAIT_S = 2 * 3600
APPROVER = "approver@example.com"
BUILD_NOTIFICATIONS = 3


class Counted:
    """Counts document reads/writes of an app-records or approvals adapter by method."""

    READS = {"read": 1, "get": 1, "find_open": 1, "consume": 1}
    WRITES = {"write": 1, "create": 1, "consume": 1, "mark_published": 1, "record": 1}

    def __init__(self, inner, tally):
        self.inner, self.tally = inner, tally

    def __getattr__(self, name):
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            self.tally["reads"] += self.READS.get(name, 0)
            self.tally["writes"] += self.WRITES.get(name, 0)
            return target(*args, **kwargs)
        return call


class Instant:
    """Zero-time work: a build ends at once (its notification), anything polled is over."""

    def __init__(self, finish_at_once: bool):
        self.finish_at_once = finish_at_once

    def start(self, pipeline, stage, command):
        from shared.app.ports import StageFinish, StartResult
        from shared.domain.events import Outcome

        return StartResult({"run": command.stage_run_id},
                           StageFinish(Outcome.SUCCEEDED) if self.finish_at_once else None)

    def poll(self, pipeline, stage, state):
        from shared.app.ports import StageFinish
        from shared.domain.events import Outcome

        return StageFinish(Outcome.SUCCEEDED, "", {"polled": True})


class Mail:
    name = "mail"

    def __init__(self):
        self.links = []

    def send_link(self, approver, subject, text):
        import re

        self.links.append(re.search(r"token=([A-Za-z0-9_\-.=%]+)", text).group(1))


def _server():
    class Ok(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _service(url: str):
    """Cloud Run's GetService for any service of the flow, in the shape the check executor reads
    (run_v2.Service): served at ``url``, the release's revision (00002) tagged ``canary`` with 10 %
    beside the stable one (00001) with 90 %, as after the prod canary's traffic stage."""
    def get_service(name: str, **_):
        revision = f"{name.rsplit('/', 1)[-1]}-000"
        return SimpleNamespace(
            uri=url, latest_ready_revision=f"{name}/revisions/{revision}02",
            traffic_statuses=[SimpleNamespace(revision=f"{revision}01", percent=90, tag="", uri=url),
                              SimpleNamespace(revision=f"{revision}02", percent=10, tag="canary", uri=url)])
    return get_service


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    """``quick`` changes nothing: the clock is fake, so the whole release takes seconds."""
    from google.cloud import firestore

    from shared.adapters.executors.http_check import HttpCheckExecutor
    from shared.adapters.http_prober import RequestsProber
    from shared.adapters.firestore_approvals import FirestoreApprovalStore
    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
    from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
    from shared.adapters.firestore_store import FirestoreStore
    from shared.app.approvals import ApprovalService
    from shared.ui.approval_http import ApprovalPages
    from shared.app.config import Settings
    from shared.app.dispatcher import Dispatcher
    from shared.app.locks import EnvironmentLocks
    from shared.app.probing import ProbeService
    from shared.app.push import PushService, signature_for
    from shared.app.repositories import RepositoryMap
    from shared.app.sweeper import sweep
    from shared.domain.pipeline import load_pipeline
    from shared.domain.state import ReleaseStatus
    from shared.app.signing_publisher import SigningPublisher
    from shared.testing.fakes import FakeClock, FakeNotifier, FakeProbeScheduler, FakePublisher

    quiet()
    report = Report()
    httpd = _server()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    with emulators(hosts, kinds=("firestore",)):
        settings = Settings(project=PROJECT, collection_prefix=prefix("cost"), approval_keys=APPROVAL_KEYS,
                            webhook_secret="bench-webhook-secret", approval_base_url="http://127.0.0.1:9")
        pipeline = load_pipeline(settings.pipeline_file)
        client = firestore.Client(project=PROJECT)
        store = CountingStore(FirestoreStore(client, settings))
        tally = {"reads": 0, "writes": 0}
        apps = Counted(FirestoreAppRecords(client, settings), tally)
        approval_store = Counted(FirestoreApprovalStore(client, settings), tally)
        clock, publisher, scheduler, mail = FakeClock(time.time()), SigningPublisher(FakePublisher(), bench_keyring), FakeProbeScheduler(), Mail()
        approvals = ApprovalService.from_settings(settings, store=approval_store, publisher=publisher, clock=clock,
                                                  releases=store, link_senders=[mail])
        approval_pages = ApprovalPages(approvals)  # the on_approval function around the service
        services = SimpleNamespace(get_service=_service(url))
        executors = {"build": Instant(True), "preflight": Instant(True), "job": Instant(False),
                     "deploy": Instant(False), "traffic": Instant(False),
                     "check": HttpCheckExecutor(settings, services)}
        locks = EnvironmentLocks(apps, publisher, settings, service_lock_records(client, settings))
        dispatcher = Dispatcher(store, publisher, executors, approvals, FakeNotifier(), clock, settings, locks,
                                Counted(FirestoreDeadLetters(client, settings), tally), roll_back=lambda service: {},
                                probes=scheduler, completion_keys=bench_keyring())
        probes = ProbeService(store, executors, publisher, scheduler, RequestsProber(), clock, settings)
        push = PushService(store, publisher, RepositoryMap([pipeline]), clock, settings, apps=apps)

        calls: dict[str, list[float]] = {"on_push": [], "dispatch": [], "probe": [], "sweep": [], "on_approval": []}

        def timed(name, fn, *args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                calls[name].append(time.perf_counter() - t0)

        commit = f"{int(time.time() * 1e6):x}".ljust(40, "a")[:40]
        body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"full_name": "acme/noesis2"},
                           "pusher": {"name": "dev", "email": "dev@example.com"}, "sender": {"login": "dev"},
                           "head_commit": {"id": commit, "message": "x\n\nRelease-Version: 9.9.9"}}).encode()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"bench-{commit}",
                   "X-Hub-Signature-256": signature_for(settings.webhook_secret, body)}
        status, answer = timed("on_push", push.handle, headers, body)
        release_id = answer["release_id"]
        delivered = 0
        sweep_reads_idle = []
        approved_at = None
        waiting_since = None
        next_tick = clock.now() + 60
        while True:
            pending = [m for m in publisher.messages[delivered:]]
            delivered = len(publisher.messages)
            for topic, data, attributes in pending:
                if topic == settings.events_topic:
                    timed("dispatch", dispatcher.handle_message, f"m{delivered}-{data['type']}-{id(data)}",
                          attributes, json.dumps(data).encode())
            if delivered != len(publisher.messages):
                continue
            state = store.inner.get(release_id)[0]
            if state.status is ReleaseStatus.SUCCEEDED and not state.outbox:
                break
            if state.status is ReleaseStatus.STOPPED:
                raise RuntimeError(f"release stopped: {state.reason}")
            due = scheduler.next_at()
            if state.status is ReleaseStatus.AWAITING_APPROVAL and waiting_since is None:
                waiting_since = clock.now()
            if waiting_since is not None and approved_at is None and clock.now() >= waiting_since + WAIT_S:
                token = mail.links[-1]
                timed("on_approval", approval_pages.handle, "GET", {"token": token}, {}, {})
                timed("on_approval", approval_pages.handle, "POST", {}, {"token": token, "decision": "approve",
                                                                     "reason": "bench"}, {"User-Agent": "bench"})
                approved_at = clock.now()
                continue
            target = min(t for t in (due, next_tick) if t is not None)
            clock.t = max(clock.t, target)
            if due is not None and due <= clock.now():
                for task in scheduler.take_due(clock.now()):
                    timed("probe", probes.handle, task)
            if clock.now() >= next_tick:
                before = store.reads
                got = timed("sweep", sweep, store, executors, publisher, clock, settings)
                if got.releases == 0:
                    sweep_reads_idle.append(store.reads - before)
                next_tick += 60
        reads = store.reads + tally["reads"] - sum(sweep_reads_idle)
        writes = store.writes + tally["writes"]
    httpd.shutdown()
    invocations = sum(len(v) for k, v in calls.items() if k != "sweep")
    seconds = sum(sum(v) for k, v in calls.items() if k != "sweep")
    billed = sum(math.ceil(max(d, 1e-9) / 0.1) * 0.1 for k, v in calls.items() if k != "sweep" for d in v)
    messages = len(publisher.messages) + sum(1 for s in pipeline.stages if s.kind.value == "build") * (
        BUILD_NOTIFICATIONS - 1)
    bench = "9 release cost"
    report.add(bench, "Firestore reads per release (2 h approval wait)", f"{reads}", "<= 50", reads <= 50,
               note="releases, apps/{app}, approvals, deliveries, pipeline definition; before: 212")
    report.add(bench, "Firestore writes per release", f"{writes}", "", None)
    report.add(bench, "function-seconds per release (our code's wall time)", f"{seconds:.2f} s", "<= 30 s",
               seconds <= 30, note=f"{invocations} invocations: " + ", ".join(
                   f"{k} {len(v)}" for k, v in calls.items() if k != "sweep") + "; before: about 300")
    report.add(bench, "function-seconds billed (each call rounded up to 100 ms)", f"{billed:.1f} s", "<= 30 s",
               billed <= 30)
    report.add(bench, "Pub/Sub messages per release", f"{messages}", "", None,
               note=f"events and notices {len(publisher.messages)}, plus {BUILD_NOTIFICATIONS - 1} more "
                    "Cloud Build notifications per build stage")
    report.add(bench, "Cloud Tasks per release (probes)", f"{scheduler.scheduled}", "", None,
               note="polls of jobs, rollouts and traffic, and the checks: the prod smoke's bake once per analysis interval")
    report.add(bench, "sweeper: reads per quiet minute, whole system", f"{max(sweep_reads_idle or [0])}", "", None,
               note=f"{len(sweep_reads_idle)} minutes of the wait cost {sum(sweep_reads_idle)} reads in all, "
                    f"whatever the number of releases; sweep calls {len(calls['sweep'])}, "
                    f"{sum(calls['sweep']):.2f} s")
    return report


if __name__ == "__main__":
    print_report("Benchmark 9: one release with a 2 h approval wait", run().rows)
