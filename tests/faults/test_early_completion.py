"""Fault 5: a stage's completion arrives before its start was fully recorded.

What the design guarantees: a stage's start is recorded (stage RUNNING with its
stage-run id, plus the outbox batch that will start it) in the same conditional write,
and the executor is called only after that write. So a real completion can never
precede the state write of its start; it can precede the *end* of that handler (the
batch removal and the recording of the executor's handle), and that case must work.
A completion naming a run the state does not know is stale: acknowledged, nothing
changes, and the sweeper's poll of running stages finds the real finish later.
"""
from __future__ import annotations

import json

import pytest

from shared.app.config import Settings
from shared.domain.events import Outcome
from shared.testing.fakes import FakeClock, FakeExecutor, FakePublisher, signing
from shared.domain.gate import GateOutcome
from shared.app.ports import StageFinish
from shared.domain.state import StageStatus
from shared.domain.wire import to_payload
from shared.app.sweeper import sweep
from shared.domain.wake import SAFETY_NET_S
from tests.faults import rig

pytestmark = pytest.mark.emulators


@pytest.fixture
def setup(emulators, unique_prefix):
    settings: Settings = rig.settings_for(emulators["project"], unique_prefix)
    return settings, rig.firestore_store(emulators["project"], settings)


def test_completion_handled_while_the_batch_that_started_the_stage_is_in_flight(setup):
    """Fault: s2's build finishes so fast that its completion is handled by another instance
    while the instance that started s2 is still inside executor.start (its state write done,
    its batch not yet removed, s2's handle not yet recorded).
    Expected: the completion is applied at once (s2 succeeded, s3 started once); the first
    instance's batch removal then meets a changed document, reads again and removes only its
    own batch, and records s2's handle without losing the completion's result; every
    stage-run id is started exactly once and no outbox is left."""
    settings, store = setup
    seen: dict[str, object] = {}
    executor = FakeExecutor()
    other_instance = rig.dispatcher(store, {"build": executor}, settings)

    def complete_s2_meanwhile(command):
        if command.stage == "s2":
            during = store.get(command.release_id)[0]
            seen["outbox during"] = [b["event_id"] for b in during.outbox]
            seen["completion"] = other_instance.handle_message(
                "s2-done", {}, rig.finished(command.release_id, "s2")).outcome

    executor.hook = complete_s2_meanwhile
    first_instance = rig.dispatcher(store, {"build": executor}, settings)
    rid = rig.create_release(store)
    first_instance.handle_message("start", {}, rig.started(rid))
    assert first_instance.handle_message("s1-done", {}, rig.finished(rid, "s1")).outcome is GateOutcome.APPLIED

    assert seen["outbox during"] == ["s1-done"], "s2's start was in flight when its completion came"
    assert seen["completion"] is GateOutcome.APPLIED
    state = store.get(rid)[0]
    assert [state.stages[s].status for s in rig.STAGES] == [StageStatus.SUCCEEDED, StageStatus.SUCCEEDED,
                                                          StageStatus.RUNNING]
    assert state.stages["s2"].result["from"] == "completion", "the completion's result survived"
    assert state.stages["s2"].result["fake_run"] == f"{rid}.s2.a1", "the late handle was recorded too"
    assert state.outbox == []
    assert executor.starts == {f"{rid}.{s}.a1": 1 for s in rig.STAGES}
    assert state.applied_events == ["start", "s1-done", "s2-done"]


def test_completion_of_a_run_not_yet_recorded_is_stale_and_the_sweeper_recovers_the_finish(setup):
    """Fault: a completion for s2's first run arrives while s1 still runs (before any state
    write started s2 - only possible for a forged, misrouted or replayed-from-elsewhere
    event, see the module docstring).
    Expected: it is STALE and acknowledged; the release document is not written at all (the
    same version token) and nothing starts. Once s2 really runs and its completion is lost,
    the sweeper's poll of the running stage publishes the finish, which is applied once."""
    settings, store = setup
    executor = FakeExecutor()
    dispatcher = rig.dispatcher(store, {"build": executor}, settings)
    rid = rig.create_release(store)
    dispatcher.handle_message("start", {}, rig.started(rid))
    _, token_before = store.get(rid)

    early = dispatcher.handle_message("s2-early", {}, rig.finished(rid, "s2"))
    assert early.outcome is GateOutcome.STALE
    state, token_after = store.get(rid)
    assert token_after == token_before, "a stale event writes nothing"
    assert state.stages["s2"].status is StageStatus.PENDING and "s2-early" not in state.applied_events
    assert executor.starts == {f"{rid}.s1.a1": 1}

    dispatcher.handle_message("s1-done", {}, rig.finished(rid, "s1"))
    executor.poll_results[f"{rid}.s2.a1"] = StageFinish(Outcome.SUCCEEDED, "", {"found_by": "poll"})
    published = signing(FakePublisher())  # as the sweep function publishes: completions signed
    # the notification never came: the sweeper's safety net polls once the stage's wake time is there
    report = sweep(store, {"build": executor}, published, FakeClock(state.created_at + SAFETY_NET_S + 5), settings)
    (finish,) = [data for _, data, _ in published.messages if data["type"] == "stage.finished"]
    assert [to_payload(e) for e in report.finished] == [{**finish, "signature": ""}] and finish["stage_run_id"] == f"{rid}.s2.a1"
    decision = dispatcher.handle_message("sweeper-1", {}, json.dumps(finish).encode())
    assert decision.outcome is GateOutcome.APPLIED
    state = store.get(rid)[0]
    assert state.stages["s2"].status is StageStatus.SUCCEEDED and state.stages["s2"].result["found_by"] == "poll"
    assert state.stages["s3"].status is StageStatus.RUNNING
    assert executor.starts == {f"{rid}.{s}.a1": 1 for s in rig.STAGES}
