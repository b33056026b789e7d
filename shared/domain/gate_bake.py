"""The gate's bake: an approver asks to end a running bake early."""
from __future__ import annotations

from shared.domain.bake_skip import skip_refusal
from shared.domain.commands import EndBakeEarly
from shared.domain.events import BakeSkipRequested
from shared.domain.gate_run import GateOutcome, Refusal, Run


def on_bake_skip(run: Run, event: BakeSkipRequested) -> tuple[GateOutcome, str]:
    """Record an approver's wish to end a bake early and send the probe that judges it; that
    probe's finish decides (shared/domain/bake_skip.py), so a failing check never passes."""
    stage, st = run.known_stage(event.stage)
    status, why = skip_refusal(run.pipeline, run.state, stage.id, event.requested_by)
    if status:
        raise Refusal(GateOutcome.REFUSED, why)
    st.result = {**st.result, "bake_skip": {"by": event.requested_by, "at": run.now, "reason": event.reason,
                                            "request": event.request_id}}
    run.record("bake skip requested", event.requested_by, stage.id, event.reason, request=event.request_id)
    run.commands.append(EndBakeEarly(run.state.release_id, stage.id, st.stage_run_id, event.requested_by,
                                      event.reason))
    return GateOutcome.APPLIED, f"end of the bake of {stage.label} asked by {event.requested_by}"
