"""The gate's replay, chaos and cancel: what operators ask of a release."""
from __future__ import annotations

from shared.domain.commands import NoticeKind, ReleaseLock
from shared.domain.events import CancelRequested, ChaosRequested, StageReplay
from shared.domain.pipeline import StageKind
from shared.domain.state import ReleaseStatus, StageStatus
from shared.domain.stage_results import result_of
from shared.domain.gate_run import GateOutcome, Refusal, Run
from shared.domain.gate_flow import advance, start
from shared.domain.gate_rollback import roll_back


def on_replay(run: Run, event: StageReplay) -> tuple[GateOutcome, str]:
    state = run.state
    stage, st = run.known_stage(event.stage)
    if state.status is ReleaseStatus.QUEUED:
        raise Refusal(GateOutcome.REFUSED, f"release is queued for {state.waiting_for}; replay when it runs")
    busy = [s for s in run.pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING]
    if busy:
        raise Refusal(GateOutcome.REFUSED, f"{busy[0].label} is running; replay when it ends")
    if run.needs_approval(stage) and not run.approved():
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} needs a valid approval first")
    if st.status in (StageStatus.PENDING, StageStatus.SKIPPED) and not (stage.optional and state.chaos_requested_by):
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} has not run yet")
    index = run.pipeline.index(stage.id)
    for earlier in run.pipeline.stages[:index]:
        status = state.stages[earlier.id].status
        # An optional stage blocks only once it ran (the chaos smoke was asked for and failed).
        passed = status is StageStatus.SUCCEEDED or (earlier.optional and status in (
            StageStatus.PENDING, StageStatus.SKIPPED))
        if not passed:
            raise Refusal(GateOutcome.REFUSED, f"{earlier.label} has not passed; replay it first")
    if stage.kind is StageKind.APPROVAL and st.status is StageStatus.SUCCEEDED:
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} is already approved")
    run.record_replay(event, accepted=True, reason=event.reason)
    for later in run.pipeline.stages[index + 1:]:
        run.reset(later)
    state.stopped_at_stage = ""
    state.reason = ""
    state.status = ReleaseStatus.RUNNING
    if stage.kind is StageKind.APPROVAL:
        state.approval = {}
    elif run.pipeline.approval_index is not None and index < run.pipeline.approval_index:
        state.approval = {}  # earlier results changed: the approval must be given again
    advance(run, index, replay=True)
    return GateOutcome.APPLIED, f"{stage.label} replayed by {event.requested_by}"


def on_chaos(run: Run, event: ChaosRequested) -> tuple[GateOutcome, str]:
    optional = [s for s in run.pipeline.stages if s.optional]
    if not optional:
        raise Refusal(GateOutcome.REFUSED, "this pipeline has no optional chaos stage")
    stage = optional[0]
    index = run.pipeline.index(stage.id)
    before = run.pipeline.stages[index - 1]
    st = run.state.stages[stage.id]
    if run.state.stages[before.id].status is not StageStatus.SUCCEEDED:
        raise Refusal(GateOutcome.REFUSED, f"chaos runs only after {before.label} passed")
    if st.status is not StageStatus.PENDING or run.state.chaos_requested_by:
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} was already requested or decided ({st.status.value})")
    if run.state.status is not ReleaseStatus.AWAITING_APPROVAL:
        raise Refusal(GateOutcome.REFUSED, f"release is {run.state.status.value}; chaos needs it awaiting approval")
    run.state.chaos_requested_by = event.requested_by
    run.record("chaos requested", event.requested_by, stage.id, "")
    start(run, stage)
    return GateOutcome.APPLIED, f"{stage.label} requested by {event.requested_by}"


def on_cancel(run: Run, event: CancelRequested) -> tuple[GateOutcome, str]:
    """Stop for good: nothing new starts, the locks go back, and a canary the release put in
    prod is rolled back, so prod keeps serving what it served before. A run still going at
    Cloud Build or Cloud Run ends on its own; its completion finds the release terminal."""
    state = run.state
    why = f"cancelled by {event.requested_by}" + (f": {event.reason}" if event.reason else "")
    # A deploy still rolling out has already put its canary on the service: rolled back too.
    rolling = {s.id for s in run.pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING}
    for stage in run.pipeline.stages:
        st = state.stages[stage.id]
        if st.status in (StageStatus.RUNNING, StageStatus.WAITING):
            st.reason = why
            run.finish(stage, StageStatus.FAILED)
        elif st.status in (StageStatus.PENDING, StageStatus.QUEUED):
            st.status = StageStatus.SKIPPED
    if state.status is not ReleaseStatus.SUCCEEDED:
        for stage in reversed(run.pipeline.stages):
            st = state.stages[stage.id]
            # Not again when this attempt's traffic was already rolled back (by a failed check or by
            # hand): that would undo what an operator chose since.
            if (stage.kind is StageKind.DEPLOY and stage.environment == "prod"
                    and (st.status is StageStatus.SUCCEEDED or stage.id in rolling)
                    and not result_of(stage.kind, st.result).rolled_back):
                roll_back(run, stage, f"cancelled: {why}")
    state.stopped_at_stage = state.stopped_at_stage or next(
        (s.id for s in run.pipeline.stages if state.stages[s.id].reason == why), "")
    if state.waiting_for:  # queued: leave the queue, or the lock could be handed to this release
        run.commands.append(ReleaseLock(state.release_id, state.waiting_for))
    state.status, state.reason, state.waiting_for = ReleaseStatus.CANCELLED, why, ""
    run.release_locks()
    run.record("cancelled", event.requested_by, state.stopped_at_stage, event.reason)
    run.notify(NoticeKind.STAGE_FAILED, state.stopped_at_stage, f"{run.title()} was {why}. Nothing runs any more; "
                "prod keeps what served before.")
    return GateOutcome.APPLIED, why
