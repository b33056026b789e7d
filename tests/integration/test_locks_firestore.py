"""Environment locks on the Firestore emulator: one release at a time per environment.

Policy under test: the newest queued release gets a freed environment; older queued
releases are superseded (shared/app/locks.py)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from google.cloud import firestore

from shared.app.config import Settings
from shared.testing.fakes import FakePublisher, signed_bytes
from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
from shared.app.locks import EnvironmentLocks
from shared.domain.events import LockGranted
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig

pytestmark = pytest.mark.emulators
APP = "mini"


@pytest.fixture
def locks(emulators, unique_prefix):
    settings = Settings(project=emulators["project"], collection_prefix=unique_prefix)
    publisher = FakePublisher()
    docs = FirestoreAppRecords(firestore.Client(project=emulators["project"]), settings)
    return EnvironmentLocks(docs, publisher, settings, service_lock_records(docs.client, settings)), publisher


def test_ten_concurrent_acquires_grant_exactly_one(locks):
    manager, publisher = locks
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda i: manager.acquire(APP, "staging", f"r{i}", 1000.0 + i), range(10)))
    assert outcomes.count("granted") == 1 and outcomes.count("queued") == 9
    holder = f"r{outcomes.index('granted')}"
    assert publisher.of_type("lock.granted") == [{"type": "lock.granted", "release_id": holder, "environment": "staging"}]
    # The holder gives staging back: the newest queued release gets it, the older ones are superseded.
    newest = max((f"r{i}" for i in range(10) if f"r{i}" != holder), key=lambda r: int(r[1:]))
    assert manager.release(APP, "staging", holder) == newest
    assert publisher.of_type("lock.granted")[-1]["release_id"] == newest
    superseded = {m["release_id"] for m in publisher.of_type("release.superseded")}
    assert superseded == {f"r{i}" for i in range(10)} - {holder, newest}
    assert all(m["superseded_by"] == newest for m in publisher.of_type("release.superseded"))
    # Asking again is answered again (a lost event is re-sent), and changes nothing.
    assert manager.acquire(APP, "staging", newest, 0) == "granted"
    assert manager.acquire(APP, "staging", sorted(superseded)[0], 0) == "superseded"
    assert manager.release(APP, "staging", "never-held") is None


def test_prod_and_staging_are_independent(locks):
    manager, _ = locks
    assert manager.acquire(APP, "staging", "a", 1.0) == "granted"
    assert manager.acquire(APP, "prod", "b", 2.0) == "granted"
    assert manager.acquire(APP, "staging", "b", 2.0) == "queued"


def test_ten_releases_race_for_staging_through_the_dispatcher(emulators, unique_prefix):
    """Fault: 10 releases for different commits reach staging at the same moment.
    Expected: one runs staging; the rest queue; when it leaves staging (awaits approval),
    the newest queued one runs and the older ones are superseded. Nothing is lost: every
    release ends in a state that says why."""
    rig = make_rig(emulators["project"], unique_prefix)
    ids = []
    for i in range(10):
        rig.clock.advance(1)  # distinct creation times: the last one is the newest
        ids.append(rig.new_release(commit=f"{i:02d}" + "c" * 14))
        rig.send(f"start-{i}", {"type": "release.started", "release_id": ids[-1]})
        rig.dispatcher.handle_message(f"lint-{i}", {}, _finished(ids[-1], "lint"))
    # All ten finish their unit tests at once and ask for staging from ten threads.
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda i: rig.dispatcher.handle_message(f"unit-{i}", {}, _finished(ids[i], "unit")), range(10)))
    rig.deliver_lock_events()
    states = {rid: rig.state(rid) for rid in ids}
    holders = [rid for rid, s in states.items() if "staging" in s.locks_held]
    assert len(holders) == 1
    assert states[holders[0]].stages["staging-migrate"].status is StageStatus.RUNNING
    assert all(s.status is ReleaseStatus.QUEUED for rid, s in states.items() if rid != holders[0])
    # The holder passes staging and waits for approval: it gives staging back.
    holder = holders[0]
    for stage in ("staging-migrate", "staging-deploy", "staging-smoke"):
        rig.send(f"{stage}-{holder}", {"type": "stage.finished", "release_id": holder, "stage": stage,
                                       "stage_run_id": rig.state(holder).stages[stage].stage_run_id,
                                       "outcome": "succeeded"})
    assert rig.state(holder).status is ReleaseStatus.AWAITING_APPROVAL
    newest = max((rid for rid in ids if rid != holder), key=lambda rid: rig.state(rid).created_at)
    final = {rid: rig.state(rid) for rid in ids}
    assert final[newest].status is ReleaseStatus.RUNNING and final[newest].locks_held == ["staging"]
    others = [rid for rid in ids if rid not in (holder, newest)]
    assert all(final[rid].status is ReleaseStatus.SUPERSEDED for rid in others)
    assert all(f"superseded by release {newest}" in final[rid].reason for rid in others)


def _finished(rid, stage):
    return signed_bytes({"type": "stage.finished", "release_id": rid, "stage": stage,
                         "stage_run_id": f"{rid}.{stage}.a1", "outcome": "succeeded"})


def test_applications_whose_services_overlap_in_a_ring_never_deadlock(locks):
    """Three applications each deploy two of three services, overlapping in a ring (the classic
    deadlock: each could hold one service and wait for the next). Locks are taken in one order,
    so from ten concurrent rounds someone always gets everything, and giving back hands on
    until every release has run; nobody is superseded across applications."""
    manager, publisher = locks
    rings = {"app-a": ("svc-1", "svc-2"), "app-b": ("svc-2", "svc-3"), "app-c": ("svc-3", "svc-1")}
    for round_ in range(5):
        ids = {app: f"{app}-r{round_}" for app in rings}
        with ThreadPoolExecutor(3) as pool:
            outcomes = dict(zip(rings, pool.map(
                lambda app: manager.acquire(app, "staging", ids[app], 1.0, "", rings[app]), rings)))
        assert "superseded" not in outcomes.values()
        running = [app for app, outcome in outcomes.items() if outcome == "granted"]
        assert len(running) == 1, outcomes  # any two of the three share a service
        ran = []
        while running:
            app = running.pop()
            ran.append(app)
            granted_before = len(publisher.of_type("lock.granted"))
            manager.release(app, "staging", ids[app])
            for grant in publisher.of_type("lock.granted")[granted_before:]:
                running.append(next(a for a, rid in ids.items() if rid == grant["release_id"]))
        assert sorted(ran) == sorted(rings), f"round {round_}: {ran} ran, the rest wait forever"
    assert publisher.of_type("release.superseded") == []


def test_a_grant_needs_every_service_lock_of_the_release(locks):
    manager, publisher = locks
    assert manager.acquire("shop", "prod", "s1", 1.0, "", ("web", "worker")) == "granted"
    assert manager.acquire("admin", "prod", "a1", 2.0, "", ("worker",)) == "queued"
    assert manager.confirms("admin", LockGranted("forged", "a1", "prod")) == "service worker/prod is held by s1, not a1"
    assert manager.acquire("admin", "prod", "a1", 2.0, "", ("worker",)) == "queued", "asking again changes nothing"
    manager.release("shop", "prod", "s1")
    assert publisher.of_type("lock.granted")[-1] == {"type": "lock.granted", "release_id": "a1", "environment": "prod"}
    assert manager.confirms("admin", LockGranted("g", "a1", "prod")) == ""
