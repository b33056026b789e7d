"""The gate's approval: a decision made through a signed link (approval.decided)."""
from __future__ import annotations

from shared.domain.events import ApprovalDecided
from shared.domain.identity import approval_refusal
from shared.domain.pipeline import StageKind
from shared.domain.state import NONCES_KEPT, ReleaseStatus, StageStatus
from shared.domain.gate_run import GateOutcome, Refusal, Run
from shared.domain.gate_flow import advance, fail


def on_approval(run: Run, event: ApprovalDecided) -> tuple[GateOutcome, str]:
    stage, st = run.known_stage(event.stage)
    state = run.state
    if st.status is not StageStatus.WAITING or event.attempt != st.attempt:
        raise Refusal(GateOutcome.STALE, f"{stage.label} is not waiting for this approval request")
    if stage.kind is not StageKind.APPROVAL:
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} is not an approval stage")
    if event.nonce in state.used_nonces:
        raise Refusal(GateOutcome.REFUSED, "this approval link was already used")
    if state.status is not ReleaseStatus.AWAITING_APPROVAL:
        raise Refusal(GateOutcome.REFUSED, f"release is {state.status.value}, not awaiting approval")
    if run.now > event.expires_at or (st.deadline is not None and run.now > st.deadline):
        raise Refusal(GateOutcome.REFUSED, "the approval link has expired")
    refused = approval_refusal(event.approver, stage.params["approvers"], state.pusher, state.pushed_by)
    if refused:
        raise Refusal(GateOutcome.REFUSED, f"{stage.label}: {refused}")
    state.used_nonces = (state.used_nonces + [event.nonce])[-NONCES_KEPT:]
    decision = {
        "approver": event.approver,
        "decision": "approved" if event.approve else "rejected",
        "at": run.now,
        "reason": event.reason,
        "nonce": event.nonce,
        "attempt": event.attempt,
        "user_agent": event.user_agent,
    }
    st.result = {**st.result, **{k: v for k, v in decision.items() if k != "nonce"}}
    run.record(decision["decision"], event.approver, stage.id, event.reason, attempt=event.attempt,
                via=event.user_agent[:80])
    if not event.approve:
        fail(run, stage, f"rejected by {event.approver}" + (f": {event.reason}" if event.reason else ""))
        return GateOutcome.APPLIED, f"{stage.label} rejected"
    state.approval = decision
    run.finish(stage, StageStatus.SUCCEEDED)
    for optional in run.pipeline.stages[: run.pipeline.index(stage.id)]:
        if optional.optional and state.stages[optional.id].status is StageStatus.PENDING:
            state.stages[optional.id].status = StageStatus.SKIPPED
    advance(run, run.pipeline.index(stage.id) + 1)
    return GateOutcome.APPLIED, f"approved by {event.approver}"
