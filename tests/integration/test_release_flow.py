"""Whole releases through the dispatcher, the real executors and the stand-in.

Everything is real but the function hosting: events travel through the Pub/Sub
emulator (the stand-in publishes Cloud Build notifications there itself), state
lives in the Firestore emulator, and a pump in the test pulls the topics and feeds
the dispatcher the way the push subscription would, running the sweeper between.
"""
from __future__ import annotations

import time
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore, pubsub_v1, run_v2

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings
from shared.adapters.executors import RetryPolicy, build_executors
from shared.adapters.executors.run_services import rollback
from shared.adapters.http_prober import RequestsProber
from shared.app.probing import ProbeService
from shared.testing.fakes import FakeApprovals, FakeNotifier, FakeProbeScheduler, rig_keyring, signing
from shared.testing.probe_runner import run_due
from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
from shared.adapters.firestore_store import FirestoreStore
from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
from shared.app.locks import EnvironmentLocks
from shared.domain.events import ApprovalDecided, ReleaseStarted
from shared.domain.pipeline import parse_pipeline
from shared.adapters.pubsub_publisher import PubSubPublisher
from shared.app.dispatcher import Dispatcher
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.app.sweeper import sweep
from tests.conftest import PROJECT

pytestmark = pytest.mark.emulators
REGION = "europe-west3"
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)


class ShiftClock:
    """Real time, plus whatever the test adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class Flow:
    def __init__(self, prefix: str, standin: StandIn, settings: Settings):
        self.settings = settings
        self.standin = standin
        self.clock = ShiftClock()
        self.store = FirestoreStore(firestore.Client(project=PROJECT), settings)
        publisher = signing(PubSubPublisher(settings))
        self.dispatcher = Dispatcher(
            self.store, publisher, build_executors(settings, retry=FAST),
            FakeApprovals(), FakeNotifier(), self.clock, settings,
            EnvironmentLocks(FirestoreAppRecords(self.store.client, settings), publisher, settings,
                             service_lock_records(self.store.client, settings)),
            FirestoreDeadLetters(self.store.client, settings), roll_back=lambda service, to=None: rollback(settings, service, to, automatic=True),
            probes=FakeProbeScheduler(), completion_keys=rig_keyring(),
        )
        self.executors = self.dispatcher.executors
        self.publisher = publisher
        # Cloud Tasks' part, in-process: probes run when due (tests/integration/test_cloud_tasks.py
        # covers the real client and the stand-in's delivery).
        self.probes = ProbeService(self.store, self.executors, publisher, self.dispatcher.probes, RequestsProber(),
                                   self.clock, settings)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscriptions = []
        for topic in (settings.events_topic, settings.builds_topic, settings.updates_topic):
            path = publisher.client.topic_path(PROJECT, topic)
            try:
                publisher.client.create_topic(name=path)
            except gexc.AlreadyExists:
                pass
            if topic == settings.updates_topic:
                continue  # notices: published, read by people
            sub = self.subscriber.subscription_path(PROJECT, f"{prefix}{topic}-pump")
            self.subscriber.create_subscription(name=sub, topic=path)
            self.subscriptions.append(sub)

    def start(self, document: dict, commit: str) -> str:
        pipeline = parse_pipeline(document)
        self.store.save_pipeline(pipeline)
        state = new_release(pipeline, repo="acme/flow", ref="refs/heads/main", commit=commit,
                            version="1.0.0", pushed_by="dev@example.com", now=self.clock.now())
        assert self.store.create(state)
        self.publisher.publish(self.settings.events_topic, ReleaseStarted("", state.release_id))
        return state.release_id

    def approve(self, state) -> None:
        """As on_approval does after a POST from the link: the decision is recorded, then published."""
        st = state.stages["approval"]
        nonce = f"n-{state.release_id}-{st.attempt}"
        self.dispatcher.approvals.confirm(nonce)
        self.dispatcher.publisher.publish(self.settings.events_topic, ApprovalDecided(
            "", state.release_id, "approval", st.attempt, nonce, "boss@example.com", True, st.deadline))

    def pump_once(self) -> int:
        handled = 0
        for sub in self.subscriptions:
            try:
                response = self.subscriber.pull(subscription=sub, max_messages=20, timeout=0.3, retry=None)
            except gexc.DeadlineExceeded:
                continue
            for received in response.received_messages:
                message = received.message
                self.dispatcher.handle_message(message.message_id, dict(message.attributes), message.data)
                self.subscriber.acknowledge(subscription=sub, ack_ids=[received.ack_id])
                handled += 1
        return handled

    def run_until(self, release_id: str, done, timeout_s: float = 40):
        deadline = time.monotonic() + timeout_s
        last_sweep = 0.0
        while time.monotonic() < deadline:
            self.pump_once()
            run_due(self.probes, self.dispatcher.probes, self.clock.now())
            state = self.store.get(release_id)[0]
            if done(state):
                return state
            if time.monotonic() - last_sweep > 0.5:
                sweep(self.store, self.executors, self.publisher, self.clock, self.settings)
                last_sweep = time.monotonic()
        raise AssertionError(f"release {release_id} did not get there: {self.store.get(release_id)[0].status}")


@pytest.fixture(scope="module")
def flow(emulators, tmp_path_factory):
    prefix = f"flow{int(time.time() * 1000) % 10**8}_"
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT,
                        local_images=frozenset({"local", "local/flow"}), pubsub_emulator_host=emulators["pubsub"],
                        builds_topic=f"{prefix}cloud-builds", log_dir=tmp_path_factory.mktemp("flow-standin"))
    with StandIn(cfg) as standin:
        settings = Settings(project=PROJECT, region=REGION, collection_prefix=prefix,
                            events_topic=f"{prefix}events", updates_topic=f"{prefix}updates",
                            builds_topic=f"{prefix}cloud-builds", cloud_build_endpoint=standin.endpoint,
                            cloud_run_endpoint=standin.endpoint, artifact_registry="local")
        yield Flow(prefix, standin, settings)


def local_build(stage_id: str, code: str = "print('ok')") -> dict:
    return {"id": stage_id, "kind": "build", "timeout": "1m",
            "params": {"steps": [{"name": "local", "entrypoint": "python", "args": ["-c", code]}]}}


def finished(state) -> bool:
    return state.status in (ReleaseStatus.SUCCEEDED, ReleaseStatus.STOPPED)


def test_notifications_success_working_queued_success_make_one_transition(flow):
    doc = {"name": "notify-order", "stages": [local_build("build-a"), local_build("build-b")]}
    rid = flow.start(doc, "a1" * 8)
    state = flow.run_until(rid, lambda s: s.stages["build-a"].status is StageStatus.SUCCEEDED)
    build_id = state.stages["build-a"].result["build_id"]
    applied = len(state.applied_events)
    for status in ("WORKING", "QUEUED", "SUCCESS"):  # after the real SUCCESS: late, out of order, duplicated
        flow.standin.publish_build_notification(build_id, status)
    flow.standin.flush_notifications()
    state = flow.run_until(rid, finished)
    assert state.status is ReleaseStatus.SUCCEEDED
    assert state.stages["build-a"].attempt == 1 and state.stages["build-a"].history == []
    started_b = [b for b in flow.standin.builds if f"run-{rid}.build-b.a1" in b.tags]
    assert len(started_b) == 1, "the re-sent notifications started nothing"
    for _ in range(3):
        flow.pump_once()
    assert len(flow.store.get(rid)[0].applied_events) == applied + 1, "only build-b's SUCCESS was applied after"


def test_failing_build_stops_the_release_naming_the_stage(flow):
    doc = {"name": "fail-build", "stages": [local_build("lint", "import sys; sys.exit(3)"), local_build("unit")]}
    rid = flow.start(doc, "b2" * 8)
    state = flow.run_until(rid, finished)
    assert state.status is ReleaseStatus.STOPPED and state.stopped_at_stage == "lint"
    assert "stage 1 'lint' failed" in state.reason and "exit" in state.reason
    assert state.stages["unit"].status is StageStatus.PENDING


def test_failing_canary_health_stops_the_release_and_keeps_all_traffic_on_the_previous_revision(flow):
    services = gcp_clients.run_services(flow.settings)
    parent = f"projects/{PROJECT}/locations/{REGION}"
    template = run_v2.RevisionTemplate(labels={"version": "0-9-0", "commit": "base"}, containers=[run_v2.Container(
        image="local/flow:v0.9.0-base", env=[run_v2.EnvVar(name="VERSION", value="0.9.0")])])
    services.create_service(parent=parent, service=run_v2.Service(template=template), service_id="flow-web").result(30)
    before = services.get_service(name=f"{parent}/services/flow-web").latest_ready_revision.split("/")[-1]
    doc = {"name": "canary", "image": "flow", "stages": [
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h",
         "params": {"approvers": ["boss@example.com"]}},
        {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "1m",
         "params": {"services": ["flow-web"], "traffic_percent": 10, "revision_tag": "canary",
                    "env": {"VERSION": "${version}", "FAIL_HEALTH": "1"}}},
        {"id": "prod-smoke", "kind": "check", "environment": "prod", "timeout": "1m",
         "params": {"target": "canary", "service": "flow-web", "revision_tag": "canary",
                    "paths": ["/", "/health/liveliness"], "window": "2s"}},
        {"id": "traffic-100", "kind": "traffic", "environment": "prod", "timeout": "1m",
         "params": {"services": ["flow-web"], "percent": 100}},
    ]}
    rid = flow.start(doc, "c3" * 8)
    flow.approve(flow.run_until(rid, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL))
    state = flow.run_until(rid, finished)
    assert state.status is ReleaseStatus.STOPPED and state.stopped_at_stage == "prod-smoke"
    assert "/health/liveliness" in state.reason
    assert state.stages["prod-deploy"].result["rolled_back"][0]["revision"] == before
    service = services.get_service(name=f"{parent}/services/flow-web")
    assert [(t.revision, t.percent) for t in service.traffic if t.percent] == [(before, 100)]
    answers = []
    for _ in range(40):
        with urllib.request.urlopen(service.uri + "/", timeout=5) as response:
            answers.append(response.read())
    assert all(b'"0.9.0"' in a for a in answers), "every request is answered by the previous revision"
    assert state.locks_held == [] and "traffic-100" not in [s for s, st in state.stages.items() if st.attempt]


def test_job_that_never_finishes_fails_at_its_timeout_through_the_sweeper(flow):
    jobs = gcp_clients.run_jobs(flow.settings)
    container = run_v2.Container(image="example.invalid/never:latest")
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    jobs.create_job(parent=f"projects/{PROJECT}/locations/{REGION}", job=job, job_id="flow-hang").result(10)
    flow.standin.set_outcome("job", "flow-hang", "HANG")
    doc = {"name": "hang", "stages": [{"id": "migrate", "kind": "job", "timeout": "2s", "params": {"job": "flow-hang"}}]}
    rid = flow.start(doc, "d4" * 8)
    state = flow.run_until(rid, finished, timeout_s=30)
    assert state.status is ReleaseStatus.STOPPED
    assert state.reason == "stage 1 'migrate' failed: timed out after 2s"
