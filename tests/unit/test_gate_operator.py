"""The gate's answers to the operator's day: cancel, and the timeline every decision leaves."""
from __future__ import annotations

import pytest

from shared.domain.commands import ReleaseLock, RollBack, StartStage
from shared.domain.events import CancelRequested
from shared.domain.gate import GateOutcome, decide
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus
from tests.unit.gate_helpers import (
    APPROVER, PIPELINE, STAGES, T0, approval, eid, finished, granted, replay, run_to, settle)


def cancel(state, who="ops@example.com", reason="wrong build"):
    return CancelRequested(eid(), state.release_id, who, reason, "req-1")


@pytest.mark.parametrize("stage", ["lint", "staging-smoke", "approval", "prod-migrate", "traffic-100"])
def test_cancel_stops_for_good_gives_back_locks_and_keeps_prod_as_it_was(stage):
    state = run_to(stage)
    held = list(state.locks_held)
    decision = decide(PIPELINE, state, cancel(state), T0 + 10)
    assert decision.outcome is GateOutcome.APPLIED
    new = decision.state
    assert new.status is ReleaseStatus.CANCELLED and new.status.terminal
    assert new.reason == "cancelled by ops@example.com: wrong build" and new.stopped_at_stage == stage
    assert new.stages[stage].status is StageStatus.FAILED and new.stages[stage].reason == new.reason
    later = STAGES[STAGES.index(stage) + 1:]
    assert all(new.stages[s].status is StageStatus.SKIPPED for s in later if not PIPELINE.stage(s).optional)
    assert new.locks_held == [] and {c.environment for c in decision.commands if isinstance(c, ReleaseLock)} == set(held)
    assert not any(isinstance(c, StartStage) for c in decision.commands)
    rollbacks = [c.stage for c in decision.commands if isinstance(c, RollBack)]
    # The canary of prod-deploy is the only thing this release changed in prod; staging is left as it is.
    assert rollbacks == (["prod-deploy"] if STAGES.index(stage) > STAGES.index("prod-deploy") else [])
    (entry,) = [e for e in new.timeline if e["kind"] == "cancelled"]
    assert entry == {"at": T0 + 10, "kind": "cancelled", "by": "ops@example.com", "stage": stage,
                     "reason": "wrong build"}


def test_a_queued_release_cancelled_leaves_the_queue_and_hands_back_a_late_grant():
    first_staging = next(i for i, s in enumerate(PIPELINE.stages) if s.environment == "staging")
    before = PIPELINE.stages[first_staging - 1].id
    state = run_to(before)
    state = decide(PIPELINE, state, finished(state, before), T0).state
    assert state.status is ReleaseStatus.QUEUED and state.waiting_for == "staging"
    decision = decide(PIPELINE, state, cancel(state), T0 + 1)
    assert [c for c in decision.commands if isinstance(c, ReleaseLock)] == [ReleaseLock(state.release_id, "staging")]
    # A grant that raced the cancel (the lock was handed over before the queue entry went) goes back at once.
    late = decide(PIPELINE, decision.state, granted(decision.state, "staging"), T0 + 2)
    assert late.outcome is GateOutcome.TERMINAL and late.commands == (ReleaseLock(state.release_id, "staging"),)


def test_a_cancelled_release_never_moves_again():
    state = decide(PIPELINE, run_to("unit"), cancel(run_to("unit")), T0).state
    for event in (finished(state, "unit"), replay(state, "lint"), cancel(state)):
        decision = decide(PIPELINE, state, event, T0 + 1)
        assert decision.outcome is GateOutcome.TERMINAL and decision.state is None


def test_the_timeline_keeps_every_decision_across_a_resend():
    state = run_to("approval")
    state = decide(PIPELINE, state, approval(state, approve=False), T0 + 1).state  # rejected: stopped
    state = decide(PIPELINE, state, replay(state, "approval", who="ops@example.com"), T0 + 2).state  # resend
    state = settle(decide(PIPELINE, state, approval(state), T0 + 3).state, T0 + 3)
    refused = decide(PIPELINE, state, replay(state, "approval", who="ops@example.com"), T0 + 4).state
    kinds = [(e["kind"], e["by"], e.get("attempt")) for e in refused.timeline]
    assert kinds == [("rejected", APPROVER, 1), ("approval links re-sent", "ops@example.com", None),
                     ("approved", APPROVER, 2), ("approval links re-sent refused", "ops@example.com", None)]
    assert [e["at"] for e in refused.timeline] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    # and it survives the trip through Firestore's dict form
    assert ReleaseState.from_dict(refused.to_dict()).timeline == refused.timeline
