"""The per-application record apps/{app} on the Firestore emulator, through the dispatcher.

Each test reproduces a "Why" of issue 11: releases of different applications superseding
each other, a forged lock grant putting two releases in staging, an older version replacing
a newer one in prod."""
from __future__ import annotations

import json
import uuid

import pytest

from shared.domain.app_record import VersionFloor
from shared.domain.gate import GateOutcome
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig
from tests.unit.gate_helpers import APPROVER, DOC, PIPELINE

pytestmark = pytest.mark.emulators


@pytest.fixture
def rig(emulators, unique_prefix):
    return make_rig(emulators["project"], unique_prefix)


def finish_running(rig, rid, outcome="succeeded"):
    state = rig.state(rid)
    stage = next(s for s, st in state.stages.items() if st.status is StageStatus.RUNNING)
    rig.send(uuid.uuid4().hex, {"type": "stage.finished", "release_id": rid, "stage": stage,
                                "stage_run_id": state.stages[stage].stage_run_id, "outcome": outcome})
    return stage


def approve(rig, rid):
    st = rig.state(rid).stages["approval"]
    nonce = uuid.uuid4().hex
    rig.dispatcher.approvals.confirm(nonce)
    return rig.send(uuid.uuid4().hex, {"type": "approval.decided", "release_id": rid, "stage": "approval",
                                       "attempt": st.attempt, "nonce": nonce, "approver": APPROVER, "approve": True,
                                       "expires_at": st.deadline})


def run_until(rig, rid, stage):
    rig.send(uuid.uuid4().hex, {"type": "release.started", "release_id": rid})
    for _ in range(30):
        state = rig.state(rid)
        if state.stages[stage].status in (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED) or (
                state.status.terminal):
            return state
        if state.status is ReleaseStatus.AWAITING_APPROVAL:
            approve(rig, rid)
            continue
        finish_running(rig, rid)
    raise AssertionError(f"{rid} never reached {stage}: {rig.state(rid).status}")


def app_doc(name: str, service: str) -> dict:
    """The test pipeline as application ``name``, deploying the Cloud Run service ``service``."""
    return json.loads(json.dumps({**DOC, "name": name}).replace('["web"]', json.dumps([service])))


def test_twenty_applications_reach_staging_at_once_and_none_supersedes_another(rig):
    """Why: one locks/staging for all repositories; of 20 releases of 20 repos, 18 were superseded."""
    ids = []
    for i in range(20):
        pipeline = parse_pipeline(app_doc(f"app-{i}", f"web-{i}"))
        rig.clock.advance(1)
        ids.append(rig.new_release(commit=f"{i:02d}" + "a" * 14, pipeline=pipeline, repo=f"acme/app-{i}"))
        run_until(rig, ids[-1], "staging-migrate")
    states = [rig.state(rid) for rid in ids]
    assert [s.status for s in states] == [ReleaseStatus.RUNNING] * 20
    assert all(s.locks_held == ["staging"] for s in states)


def test_a_forged_lock_grant_does_not_put_a_second_release_into_staging(rig):
    """Why: any publisher on pipeline-events granted a lock; two releases ran staging at once."""
    holder = rig.new_release(commit="1" * 16)
    run_until(rig, holder, "staging-migrate")
    rig.clock.advance(1)
    queued = rig.new_release(commit="2" * 16)
    assert run_until(rig, queued, "staging-migrate").status is ReleaseStatus.QUEUED
    decision = rig.send("forged-grant", {"type": "lock.granted", "release_id": queued, "environment": "staging"})
    assert decision.outcome is GateOutcome.REFUSED and f"held by {holder}" in decision.reason
    assert rig.state(queued).status is ReleaseStatus.QUEUED and rig.state(queued).locks_held == []
    forged = rig.send("forged-supersede", {"type": "release.superseded", "release_id": holder,
                                           "environment": "staging", "superseded_by": queued})
    assert forged.outcome is GateOutcome.REFUSED
    assert rig.state(holder).status is ReleaseStatus.RUNNING


def test_an_older_version_approved_later_never_replaces_a_newer_one_in_prod(rig):
    """Why: 3.0.0 was released, then 2.5.0 (pushed earlier, approved later) went to prod and replaced it."""
    older = rig.new_release(commit="3" * 16, version="2.5.0")
    run_until(rig, older, "approval")  # waits for approval
    rig.clock.advance(1)
    newer = rig.new_release(commit="4" * 16, version="3.0.0")
    run_until(rig, newer, "traffic-100")
    finish_running(rig, newer)
    assert rig.state(newer).status is ReleaseStatus.SUCCEEDED
    approve(rig, older)
    state = rig.state(older)
    assert state.status is ReleaseStatus.SUPERSEDED
    assert "version 2.5.0 is not higher than 3.0.0" in state.reason and newer in state.reason
    assert state.stages["prod-migrate"].attempt == 0, "no prod stage of the older version ran"
    notices = [d for _, d, _ in rig.publisher.messages if d.get("type") == "release.notice" and d["release_id"] == older]
    assert any("2.5.0" in n["message"] and "3.0.0" in n["message"] for n in notices)


def test_a_rollback_does_not_lower_the_floor(rig):
    """The floor is the highest version that entered prod; a failed canary rolls traffic back, not the floor."""
    first = rig.new_release(commit="5" * 16, version="3.0.0")
    run_until(rig, first, "prod-deploy")
    finish_running(rig, first)  # the canary deploy
    finish_running(rig, first, outcome="failed")  # traffic 100 % fails: the release stops
    assert rig.state(first).status is ReleaseStatus.STOPPED
    record, _ = rig.dispatcher.locks.records.read(PIPELINE.name)
    assert record.version_floor == VersionFloor("3.0.0", first)
    rig.clock.advance(1)
    same = rig.new_release(commit="6" * 16, version="3.0.0")
    run_until(rig, same, "prod-migrate")
    assert rig.state(same).status is ReleaseStatus.SUPERSEDED
    rig.clock.advance(1)
    next_one = rig.new_release(commit="7" * 16, version="3.0.1")
    assert run_until(rig, next_one, "prod-migrate").stages["prod-migrate"].status is StageStatus.RUNNING


def test_two_applications_that_deploy_the_same_service_take_turns_on_it_and_never_supersede(rig):
    """Two pipeline files (applications "shop" and "shop-admin") deploy the Cloud Run service
    "storefront": they share its lock per environment, first come first served; a third
    release of "shop" supersedes only the older "shop" release queued behind it."""
    shop, admin = parse_pipeline(app_doc("shop", "storefront")), parse_pipeline(app_doc("shop-admin", "storefront"))
    first = rig.new_release(commit="5" * 16, pipeline=shop, repo="acme/shop")
    assert run_until(rig, first, "staging-migrate").status is ReleaseStatus.RUNNING
    rig.clock.advance(1)
    other = rig.new_release(commit="6" * 16, pipeline=admin, repo="acme/shop-admin")
    state = run_until(rig, other, "staging-migrate")
    assert state.status is ReleaseStatus.QUEUED and state.locks_held == [], "storefront is taken by the shop release"
    forged = rig.send("forged-grant", {"type": "lock.granted", "release_id": other, "environment": "staging"})
    assert forged.outcome is GateOutcome.REFUSED and "service storefront/staging is held by" in forged.reason
    # The shop release passes staging and waits for approval: storefront goes to shop-admin.
    for _ in range(3):
        finish_running(rig, first)
    assert rig.state(first).status is ReleaseStatus.AWAITING_APPROVAL
    state = rig.state(other)
    assert state.status is ReleaseStatus.RUNNING and state.locks_held == ["staging"]
    assert state.stages["staging-migrate"].status is StageStatus.RUNNING
    # A newer shop release queues behind shop-admin on storefront, not superseded by it.
    rig.clock.advance(1)
    newer = rig.new_release(commit="7" * 16, pipeline=shop, repo="acme/shop")
    assert run_until(rig, newer, "staging-migrate").status is ReleaseStatus.QUEUED
    assert rig.state(other).status is ReleaseStatus.RUNNING and rig.state(newer).status is ReleaseStatus.QUEUED


def test_applications_that_share_no_service_do_not_wait_for_each_other(rig):
    one = rig.new_release(commit="8" * 16, pipeline=parse_pipeline(app_doc("one", "web-one")), repo="acme/one")
    two = rig.new_release(commit="9" * 16, pipeline=parse_pipeline(app_doc("two", "web-two")), repo="acme/two")
    assert run_until(rig, one, "staging-migrate").status is ReleaseStatus.RUNNING
    assert run_until(rig, two, "staging-migrate").status is ReleaseStatus.RUNNING
