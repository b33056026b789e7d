"""The gate's completion: a stage run's finish (stage.finished)."""
from __future__ import annotations

import hmac

from shared.domain.events import Outcome, StageFinished
from shared.domain.pipeline import StageKind
from shared.domain.stage_results import CheckResult, build_id_of, result_of
from shared.domain.state import StageStatus
from shared.domain.gate_run import GateOutcome, Refusal, Run
from shared.domain.gate_flow import advance, fail


def on_finished(run: Run, event: StageFinished) -> tuple[GateOutcome, str]:
    stage, st = run.known_stage(event.stage)
    if not hmac.compare_digest(st.stage_run_id.encode(), event.stage_run_id.encode()):
        # The current run's id ends in its secret: a guessed or older id is not it.
        raise Refusal(GateOutcome.STALE, f"{event.stage_run_id} is not the current run of {stage.label}")
    reported, recorded = build_id_of(event.result), build_id_of(st.result)
    if reported and reported != recorded:
        # A notification counts only for the build this run recorded; before the handle is
        # recorded it cannot be matched, and the executor's own poll decides.
        raise Refusal(GateOutcome.STALE, f"build {reported} is not the build {stage.label} recorded "
                                          f"({recorded or 'none yet'})")
    if st.status is not StageStatus.RUNNING:
        raise Refusal(GateOutcome.STALE, f"{stage.label} is already {st.status.value}")
    if stage.kind is StageKind.APPROVAL:  # never RUNNING today; kept so it can never finish this way
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} finishes only through a signed approval")
    st.result = {**st.result, **dict(event.result)}
    finished = result_of(stage.kind, event.result)
    early = finished.bake_ended_early if isinstance(finished, CheckResult) else None
    if early is not None:  # the skip probe's verdict (relctl skip-bake): on the timeline either way
        passed = event.outcome is Outcome.SUCCEEDED
        run.record("bake ended early" if passed else "bake not ended early", early.by, stage.id,
                    early.reason if passed else event.reason)
    if event.outcome is Outcome.SUCCEEDED:
        run.finish(stage, StageStatus.SUCCEEDED)
        advance(run, run.pipeline.index(stage.id) + 1)
        return GateOutcome.APPLIED, f"{stage.label} succeeded"
    fail(run, stage, event.reason or "failed")
    return GateOutcome.APPLIED, f"{stage.label} failed"
