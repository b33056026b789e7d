"""A bounded release document, on the Firestore emulator (which refuses a document over 1 MiB as
Firestore does: "maximum entity size is 1048576 bytes").

Why (issue 11): refused replays, attempt history with full results and used nonces grew
without limit; a flaky E2E replayed ~200 times reached the 1 MiB limit, after which every
event of the release failed and its lock was never given back.
"""
from __future__ import annotations

import json
import uuid

import pytest

from shared.domain.events import StageReplay
from shared.domain.state import HISTORY_KEPT, REPLAYS_KEPT, ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig

pytestmark = pytest.mark.emulators
BIG_RESULT = {f"junit_{i}": "x" * 2000 for i in range(4)}  # 8 kB of results per attempt, like a JUnit summary


@pytest.fixture
def rig(emulators, unique_prefix):
    return make_rig(emulators["project"], unique_prefix)


def replay(rig, rid, stage):
    replay_id = uuid.uuid4().hex
    rig.operator_requests.record(replay_id, {"action": "replay", "release_id": rid, "stage": stage,
                                             "requested_by": "ops@example.com"})
    return rig.dispatcher.handle(StageReplay(uuid.uuid4().hex, rid, stage, replay_id, "ops@example.com", "flaky"))


def fail_running(rig, rid, stage, result=None):
    st = rig.state(rid).stages[stage]
    rig.send(uuid.uuid4().hex, {"type": "stage.finished", "release_id": rid, "stage": stage,
                                "stage_run_id": st.stage_run_id, "outcome": "failed", "reason": "flaky",
                                "result": result or {}})


def test_two_hundred_replays_of_a_flaky_stage_keep_the_document_small_and_working(rig):
    rid = rig.new_release()
    rig.send("start", {"type": "release.started", "release_id": rid})
    rig.send("lint", {"type": "stage.finished", "release_id": rid, "stage": "lint",
                      "stage_run_id": f"{rid}.lint.a1", "outcome": "succeeded"})
    for _ in range(200):
        fail_running(rig, rid, "unit", BIG_RESULT)
        replay(rig, rid, "unit")
        replay(rig, rid, "prod-deploy")  # refused: counted, not kept forever
    state = rig.state(rid)
    assert state.stages["unit"].attempt == 201 and state.stages["unit"].status is StageStatus.RUNNING
    assert len(state.stages["unit"].history) == HISTORY_KEPT
    assert len(state.replays) == REPLAYS_KEPT and state.replays_refused == 200
    size = len(json.dumps(state.to_dict()))
    assert size < 200_000, size


def test_a_write_refused_for_size_stops_the_release_gives_back_its_locks_and_says_why(rig):
    rid = rig.new_release()
    rig.send("start", {"type": "release.started", "release_id": rid})
    for stage in ("lint", "unit"):
        rig.send(f"ok-{stage}", {"type": "stage.finished", "release_id": rid, "stage": stage,
                                 "stage_run_id": rig.state(rid).stages[stage].stage_run_id, "outcome": "succeeded"})
    assert rig.state(rid).locks_held == ["staging"]
    huge = {f"part_{i}": "y" * 300_000 for i in range(4)}  # 1.2 MB: no document can hold it
    decision = rig.send("huge", {"type": "stage.finished", "release_id": rid, "stage": "staging-migrate",
                                 "stage_run_id": rig.state(rid).stages["staging-migrate"].stage_run_id,
                                 "outcome": "succeeded", "result": huge})
    assert "1 MiB" in decision.reason
    state = rig.state(rid)
    assert state.status is ReleaseStatus.STOPPED and "1 MiB" in state.reason
    assert state.stages["staging-migrate"].status is StageStatus.FAILED and state.locks_held == []
    record, _ = rig.dispatcher.locks.records.read(state.pipeline_name)
    assert record.lock("staging").holder == ""
    notices = rig.publisher.of_type("release.notice")
    assert any("1 MiB" in n["message"] for n in notices)
