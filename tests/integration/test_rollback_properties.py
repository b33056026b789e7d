"""Rollbacks are right over any history: a property test through the real gate, dispatcher,
locks, deploy/traffic executors, automatic and manual rollback, against the Cloud Run stand-in
through the real run_v2 clients.

Why (issue 24): over histories of several releases (canaries that pass and fail, replays, hand
rollbacks, later releases) the automatic rollback recorded the wrong "from", hand rollbacks went
to failed canaries without --force and were refused for good revisions, a plain rollback picked
a failed revision, and a release deployed after a traffic-only rollback inherited the failed
canary's settings. After every step of every generated history this checks:

1. every revision serving prod traffic completed a release, or belongs to a release still in
   flight (its canary), unless the last move was an operator's forced one;
2. no revision that failed a canary serves, unless forced;
3. the history's recorded moves chain (each "before" is the previous "after") and the last
   "after" is exactly the split Cloud Run reports;
4. no revision's template carries a setting that only a release which never completed declared.
"""
from __future__ import annotations

import itertools
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors import ApiCaller, RetryPolicy
from shared.adapters.executors.run_services import DeployExecutor, TrafficExecutor, rollback
from shared.app.config import REPO_ROOT, Settings
from shared.app.dispatcher import Dispatcher
from shared.app.locks import EnvironmentLocks
from shared.app.manual_rollback import register_rollback
from shared.app.operator import Caller
from shared.app.service_locks import empty_service_record
from shared.domain.errors import RequestRefused
from shared.domain.events import (ApprovalDecided, CancelRequested, Outcome, ReleaseStarted, StageFinished,
                                  StageReplay)
from shared.domain.pipeline import parse_pipeline
from shared.domain.revision_history import Verdict, split_of
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.testing.fakes import (FakeApprovals, FakeClock, FakeDeadLetters, FakeExecutor, FakeNotifier,
                                  FakeOperatorRequests, FakeProbeScheduler, FakePublisher, FakeRevisionHistories,
                                  FakeStore, InMemoryAppRecords, rig_keyring, signed, signing)

PROJECT, REGION = "local-project", "europe-west3"
APPROVER, PUSHER, OPERATOR = "boss@example.com", "dev@example.com", "ops@example.com"
T0 = 1_800_000_000.0
STAGES = ("approval", "prod-deploy", "prod-smoke", "traffic-100")
_services = itertools.count(1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT, local_images=frozenset({"local"}),
                        log_dir=tmp_path_factory.mktemp("standin-rollback-props"))
    with StandIn(cfg) as running:
        running.set_outcome("service", "prop-", "SUCCESS")
        yield running


def pipeline_of(service: str, n: int):
    """Release n's pipeline: each release declares a setting only it has (ONLY_R<n>)."""
    return parse_pipeline({"name": service, "stages": [
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h",
         "params": {"approvers": [APPROVER]}},
        {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "5m",
         "params": {"services": [service], "traffic_percent": 10,
                    "env": {"VERSION": "${version}", f"ONLY_R{n}": "on"}}},
        {"id": "prod-smoke", "kind": "check", "environment": "prod", "timeout": "5m",
         "params": {"target": "canary", "service": service, "paths": ["/"]}},
        {"id": "traffic-100", "kind": "traffic", "environment": "prod", "timeout": "5m",
         "params": {"services": [service], "percent": 100}}]})


class World:
    """One service, its releases, the real dispatcher over fakes of the stores, the stand-in for Cloud Run."""

    def __init__(self, standin: StandIn):
        self.service = f"prop-{next(_services)}"
        self.standin = standin
        self.settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint,
                                 outbox_lease_s=60)
        self.clients = {"services": gcp_clients.run_services(self.settings),
                        "revisions": gcp_clients.run_revisions(self.settings)}
        caller = ApiCaller(RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5))
        self.histories = FakeRevisionHistories()
        self.store, self.publisher, self.clock = FakeStore(), signing(FakePublisher()), FakeClock(T0)
        self.approvals, self.requests = FakeApprovals(), FakeOperatorRequests()
        self.deploy = DeployExecutor(self.settings, self.clients["services"], self.clients["revisions"], caller,
                                     self.histories)
        self.traffic = TrafficExecutor(self.settings, self.clients["services"], self.clients["revisions"], caller)
        locks = EnvironmentLocks(InMemoryAppRecords(), self.publisher, self.settings,
                                 InMemoryAppRecords(empty_service_record))

        def roll_back(service, to=None):
            return rollback(self.settings, service, to, clients=self.clients, caller=caller,
                            history=self.histories.read(service), automatic=True)

        self.dispatcher = Dispatcher(
            self.store, self.publisher, {"deploy": self.deploy, "traffic": self.traffic, "check": FakeExecutor()},
            self.approvals, FakeNotifier(), self.clock, self.settings, locks, FakeDeadLetters(),
            roll_back=roll_back, operator_requests=self.requests, probes=FakeProbeScheduler(),
            completion_keys=rig_keyring(), histories=self.histories)

        class Registry:
            def register(_, name, handler):
                self.manual = handler

        def mover(service, how):
            return rollback(self.settings, service, how["to_revision"], clients=self.clients, caller=caller,
                            history=how["history"], force=how["force"], reason=how["reason"], dry_run=how["dry_run"])

        register_rollback(Registry(), self.store, self.publisher, "events", mover, self.histories, self.clock)
        self.releases: list[str] = []
        self.pipelines: dict[str, object] = {}
        self.delivered = 0
        self.forced = False
        self.log: list[str] = []

    # -- actions ------------------------------------------------------------------------
    def push(self) -> None:
        n = len(self.releases)
        pipeline = pipeline_of(self.service, n)
        state = new_release(pipeline, repo="acme/app", ref="refs/heads/main", commit=f"{n:07d}" + "a" * 33,
                            version=f"1.{n}.0", pushed_by=PUSHER, now=T0 + n)
        self.store.save_pipeline(pipeline)
        assert self.store.create(state)
        self.releases.append(state.release_id)
        self.pipelines[state.release_id] = pipeline
        self.handle(ReleaseStarted(uuid.uuid4().hex, state.release_id))

    def active(self):
        states = [self.store.get(r)[0] for r in self.releases]
        return [s for s in states if not s.status.terminal and s.status is not ReleaseStatus.STOPPED
                and s.status is not ReleaseStatus.QUEUED]

    def advance(self, passes: bool) -> bool:
        """The oldest moving release takes its next step: approved, a rollout done, a check's verdict."""
        for state in self.active():
            for stage_id in STAGES:
                st = state.stages[stage_id]
                if st.status is StageStatus.WAITING and state.status is ReleaseStatus.AWAITING_APPROVAL:
                    nonce = uuid.uuid4().hex
                    self.approvals.confirm(nonce)
                    self.handle(ApprovalDecided(uuid.uuid4().hex, state.release_id, stage_id, st.attempt, nonce,
                                                APPROVER, True, st.deadline))
                    return True
                if st.status is StageStatus.RUNNING:
                    pipeline = self.pipelines[state.release_id]
                    stage = pipeline.stage(stage_id)
                    if stage_id == "prod-smoke":
                        result = Outcome.SUCCEEDED if passes else Outcome.FAILED
                        self.finish(state.release_id, stage_id, st.stage_run_id, result, {})
                        return True
                    executor = self.deploy if stage_id == "prod-deploy" else self.traffic
                    finished = executor.poll(pipeline, stage, st)
                    if finished is not None:
                        self.finish(state.release_id, stage_id, st.stage_run_id, finished.outcome,
                                    dict(finished.result), finished.reason)
                    return finished is not None
        return False

    def finish(self, release_id, stage_id, run_id, outcome, result, reason=""):
        self.handle(signed(StageFinished(uuid.uuid4().hex, release_id, stage_id, run_id, outcome,
                                         reason or ("" if outcome is Outcome.SUCCEEDED else "smoke: 500"), result)))

    def replay(self, which: int, stage_index: int) -> None:
        if not self.releases:
            return
        release_id = self.releases[which % len(self.releases)]
        request = uuid.uuid4().hex
        stage = STAGES[stage_index % len(STAGES)]
        self.requests.record(request, {"action": "replay", "release_id": release_id, "requested_by": OPERATOR,
                                       "stage": stage})
        self.handle(StageReplay(uuid.uuid4().hex, release_id, stage, request, OPERATOR, "again"))

    def cancel(self) -> None:
        running = [s for s in (self.store.get(r)[0] for r in self.releases) if not s.status.terminal]
        if running:
            request = uuid.uuid4().hex
            release_id = running[-1].release_id
            self.requests.record(request, {"action": "cancel", "release_id": release_id, "requested_by": OPERATOR})
            self.handle(CancelRequested(uuid.uuid4().hex, release_id, OPERATOR, "stop it", request))

    def roll_back_by_hand(self, target: int | None, force: bool) -> None:
        names = [r.name for r in self.histories.read(self.service).revisions]
        to = names[target % len(names)] if target is not None and names else ""
        request = uuid.uuid4().hex
        self.requests.record(request, {"action": "rollback", "requested_by": OPERATOR, "service": self.service})
        caller = Caller(OPERATOR, "sub", request, self.clock.now())
        try:
            moved = self.manual(caller, {"service": self.service, "to_revision": to, "force": force,
                                         "reason": "by hand"})
        except RequestRefused as exc:
            self.log.append(f"refused: {exc}")
            return
        self.forced = bool(moved.get("forced"))
        self.pump()

    # -- plumbing -----------------------------------------------------------------------
    def handle(self, event) -> None:
        self.dispatcher.handle(event)
        self.pump()

    def pump(self) -> None:
        """Deliver what the dispatcher and the operator action published (locks, supersession,
        manual rollbacks), as Pub/Sub would."""
        import json

        while self.delivered < len(self.publisher.messages):
            _, data, _ = self.publisher.messages[self.delivered]
            self.delivered += 1
            if data.get("type") in ("lock.granted", "release.superseded", "release.rolled_back"):
                self.dispatcher.handle_message(uuid.uuid4().hex, {}, json.dumps(data).encode())

    def reported_split(self):
        service = self.clients["services"].get_service(
            name=f"projects/{PROJECT}/locations/{REGION}/services/{self.service}")
        return split_of((t.revision.rsplit("/", 1)[-1], t.percent) for t in service.traffic_statuses)

    def revisions(self):
        return list(self.clients["revisions"].list_revisions(
            parent=f"projects/{PROJECT}/locations/{REGION}/services/{self.service}"))

    def stop(self) -> None:
        """Stop this service's routers in the stand-in (each example makes a new service)."""
        services = self.standin._services
        with services._lock:
            mine = [k for k in services._routers if k[0].endswith(f"/services/{self.service}")]
            routers = [services._routers.pop(k) for k in mine]
        for router in routers:  # shutting a server down waits for its poll (0.5 s): not in the test's time
            threading.Thread(target=router.stop, daemon=True).start()

    # -- the properties -----------------------------------------------------------------
    def check(self, step) -> None:
        history = self.histories.read(self.service)
        split = self.reported_split()
        where = f"after {step}: split {split}, verdicts " + ", ".join(
            f"{r.name}={r.verdict.value}" for r in history.revisions)
        # A revision an operator forced traffic onto may keep serving (beside a later canary too)
        # until a release completes or a rollback moves it away.
        forced = {r for m in history.moves if m.forced for r, _ in m.after}
        for revision, percent in split:
            record = history.revision(revision)
            verdict = record.verdict if record else None
            if revision not in forced:
                assert verdict in (Verdict.COMPLETED, Verdict.PENDING), \
                    f"{revision} serves {percent} % but {verdict and verdict.value}: {where}"
                assert verdict is not Verdict.FAILED or percent < 100, where
        assert history.serving() == split, f"recorded {history.serving()} but Cloud Run reports {split}: {where}"
        for earlier, later in zip(history.moves, history.moves[1:]):
            assert later.before == earlier.after, f"move {later.move_id} starts from {later.before}, " \
                                                  f"not {earlier.after}: {where}"
        never = {f"ONLY_R{self.releases.index(r.release_id)}" for r in history.revisions
                 if r.release_id in self.releases and r.verdict is not Verdict.COMPLETED}
        completed_or_own = {}
        for revision in self.revisions():
            record = history.revision(revision.name.rsplit("/", 1)[-1])
            own = f"ONLY_R{self.releases.index(record.release_id)}" if record and record.release_id in self.releases \
                else ""
            names = {e.name for c in revision.containers for e in c.env}
            completed_or_own[revision.name] = names
            leaked = (names & never) - {own}
            # A setting of a release that never completed may only be carried by that release's own revisions
            # (a later one of the same release included: a replayed deploy).
            leaked = {n for n in leaked if not any(r.verdict is Verdict.COMPLETED and
                                                   f"ONLY_R{self.releases.index(r.release_id)}" == n
                                                   for r in history.revisions if r.release_id in self.releases)}
            assert not leaked, f"{revision.name} carries {sorted(leaked)} of a release that never completed: {where}"


STEP = {
    "push": st.tuples(st.just("push")),
    "advance": st.tuples(st.just("advance"), st.booleans()),
    "replay": st.tuples(st.just("replay"), st.integers(0, 5), st.integers(0, 3)),
    "rollback": st.tuples(st.just("rollback"), st.one_of(st.none(), st.integers(0, 9)), st.booleans()),
    "cancel": st.tuples(st.just("cancel")),
}
# Moving releases on is the most common step, or few histories get past a canary.
ACTIONS = st.sampled_from(["push"] * 2 + ["advance"] * 6 + ["replay", "rollback", "rollback", "cancel"]).flatmap(
    lambda kind: STEP[kind])


def run_history(standin, steps) -> None:
    world = World(standin)
    try:
        # Release 0 completes first: prod serves a revision that completed a release.
        world.push()
        while world.advance(True):
            pass
        assert world.store.get(world.releases[0])[0].status is ReleaseStatus.SUCCEEDED
        world.check("release 0")
        for step in steps:
            kind = step[0]
            if kind == "push":
                world.push()
            elif kind == "advance":
                world.advance(step[1])
            elif kind == "replay":
                world.replay(step[1], step[2])
            elif kind == "rollback":
                world.roll_back_by_hand(step[1], step[2])
            else:
                world.cancel()
            world.check(step)
    finally:
        world.stop()


@hsettings(max_examples=int(__import__('os').environ.get('ROLLBACK_EXAMPLES', '300')), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(steps=st.lists(ACTIONS, min_size=4, max_size=16))
def test_rollbacks_are_right_over_any_history(standin, steps):
    run_history(standin, steps)
