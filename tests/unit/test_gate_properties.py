"""Property: no sequence of events, valid, duplicated, reordered, forged or replayed,
starts a stage out of order or reaches a post-approval stage without a valid approval."""
from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.commands import StartStage
from shared.domain.events import CancelRequested, LockGranted, Outcome, StageFinished, Superseded
from shared.domain.gate import GateOutcome, decide
from shared.domain.state import StageStatus
from tests.unit.gate_helpers import (
    APPROVAL_INDEX,
    APPROVER,
    PIPELINE,
    PUSHER,
    STAGES,
    T0,
    approval,
    chaos,
    eid,
    finished,
    fresh_state,
    replay,
    started,
    tick,
)

# Weighted towards progress so that many sequences get past the approval.
KINDS = ["finish_current"] * 8 + ["approve"] * 3 + ["grant"] * 6 + [
    "supersede", "fail_current", "finish_forged", "approve_forged", "chaos", "replay", "tick", "duplicate", "started", "old_event",
    "cancel"]


def _draw_event(data, state, history):
    kind = data.draw(st.sampled_from(KINDS))
    running = [s for s in STAGES if state.stages[s].status is StageStatus.RUNNING]
    if kind in ("finish_current", "fail_current") and running:
        outcome = Outcome.SUCCEEDED if kind == "finish_current" else Outcome.FAILED
        return finished(state, running[0], outcome)
    if kind == "finish_forged":
        stage = data.draw(st.sampled_from(STAGES + ["ghost"]))
        attempt = data.draw(st.integers(0, 3))
        outcome = data.draw(st.sampled_from(list(Outcome)))
        return StageFinished(eid(), state.release_id, stage, f"{state.release_id}.{stage}.a{attempt}", outcome)
    if kind == "approve":
        return approval(state, approve=data.draw(st.booleans()))
    if kind == "approve_forged":
        who = data.draw(st.sampled_from([PUSHER, "mallory@example.com", APPROVER]))
        attempt = data.draw(st.integers(0, 3))
        expires = data.draw(st.sampled_from([T0 - 1, T0 + 10**7]))
        return approval(state, approver=who, attempt=attempt, expires_at=expires)
    if kind == "grant":
        env = data.draw(st.sampled_from([state.waiting_for or "staging"] * 4 + ["staging", "prod"]))
        return LockGranted(eid(), state.release_id, env)
    if kind == "supersede":
        return Superseded(eid(), state.release_id, state.waiting_for or "staging", "newer")
    if kind == "chaos":
        return chaos(state)
    if kind == "replay":
        return replay(state, data.draw(st.sampled_from(STAGES + ["ghost"])))
    if kind == "tick":
        return tick(state)
    if kind == "cancel":
        return CancelRequested(eid(), state.release_id, "ops@example.com", "stop")
    if kind in ("duplicate", "old_event") and history:
        old = data.draw(st.sampled_from(history))
        return old if kind == "duplicate" else replace(old, id=eid())  # same content, new id
    return started(state.release_id)


def _assert_order(new_state, command: StartStage):
    index = STAGES.index(command.stage)
    for earlier in PIPELINE.stages[:index]:
        status = new_state.stages[earlier.id].status
        if earlier.optional:
            assert status in (StageStatus.PENDING, StageStatus.SKIPPED, StageStatus.SUCCEEDED)
        else:
            assert status is StageStatus.SUCCEEDED, f"{command.stage} started while {earlier.id} is {status}"
    if index > APPROVAL_INDEX:
        decision = new_state.approval
        assert new_state.stages["approval"].status is StageStatus.SUCCEEDED
        assert decision["decision"] == "approved"
        assert decision["approver"] == APPROVER and decision["approver"] != new_state.pushed_by


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_event_sequences_keep_the_gate(data):
    state = fresh_state()
    now = T0
    history = []
    for _ in range(data.draw(st.integers(5, 120))):
        event = _draw_event(data, state, history)
        # Time passes a little with every event; only the sweeper's tick may come much later.
        jumps = [0, 1, 5, 60, 400, 4000] if event.type.value == "release.tick" else [0, 1, 5]
        now += data.draw(st.sampled_from(jumps))
        was_terminal = state.status.terminal
        decision = decide(PIPELINE, state, event, now)
        history.append(event)
        if was_terminal or decision.outcome is GateOutcome.DUPLICATE:
            assert decision.state is None
        if decision.state is None:
            assert not any(isinstance(c, StartStage) for c in decision.commands)
            continue
        for command in decision.commands:
            if isinstance(command, StartStage):
                _assert_order(decision.state, command)
        running = [s for s in STAGES if decision.state.stages[s].status is StageStatus.RUNNING]
        assert len(running) <= 1
        for stage in running:
            env = PIPELINE.stage(stage).environment
            assert env == "build" or env in decision.state.locks_held, f"{stage} runs without the {env} lock"
        for stage in STAGES:
            assert all(a.status not in ("pending", "queued") for a in decision.state.stages[stage].history)
        assert event.id in decision.state.applied_events
        state = decision.state
