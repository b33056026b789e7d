"""The gate's rollbacks: the deploy a failed check checked goes back to what served before; rollbacks by hand."""
from __future__ import annotations

from shared.domain.commands import FollowRollback, NoticeKind, RollBack
from shared.domain.events import RolledBack
from shared.domain.pipeline import Stage, StageKind
from shared.domain.stage_results import result_of, results_of, rolled_back_as_stored
from shared.domain.state import ReleaseStatus, StageState, StageStatus
from shared.domain.wire import to_payload
from shared.domain.gate_run import GateOutcome, Refusal, Run


def serving_before(deployed: StageState, services: tuple[str, ...]) -> dict[str, str]:
    """Per service, the revision recorded as serving before the FIRST attempt of a deploy that
    recorded one: a replayed deploy after a failed canary must not go back to that canary."""
    found: dict[str, str] = {}
    for result in results_of(StageKind.DEPLOY, deployed):
        for target in result.revisions:
            if target.service in services and target.serving_before and target.service not in found:
                found[target.service] = target.serving_before
    return found


def roll_back_checked_deploy(run: Run, check: Stage, reason: str = "") -> None:
    for earlier in reversed(run.pipeline.stages[: run.pipeline.index(check.id)]):
        if earlier.kind is StageKind.DEPLOY and earlier.environment == check.environment:
            if run.state.stages[earlier.id].status is StageStatus.SUCCEEDED:
                roll_back(run, earlier, f"{check.label} failed: {reason}" if reason else f"{check.label} failed")
            return


def roll_back(run: Run, deploy: Stage, why: str) -> None:
    """Every service the deploy changed, background ones included, back to what served before it."""
    deployed = run.state.stages[deploy.id]
    services = tuple(str(s) for s in [*deploy.params["services"], *(deploy.params.get("background_services") or ())])
    run.commands.append(RollBack(run.state.release_id, deploy.id, deployed.stage_run_id, services,
                                  serving_before(deployed, services), why))


def on_rolled_back(run: Run, event: RolledBack) -> tuple[GateOutcome, str]:
    """A rollback done by hand through the operator function, recorded on the deploy stage that
    deployed the service (finished releases too) like the gate's own, and announced."""
    stage, st = run.known_stage(event.stage)
    if stage.kind is not StageKind.DEPLOY:
        raise Refusal(GateOutcome.REFUSED, f"{stage.label} is not a deploy stage")
    if any(r.request == event.request_id for r in result_of(stage.kind, st.result).rolled_back):
        return GateOutcome.IGNORED, f"rollback {event.request_id} is already recorded"
    if not event.landed:  # the rollout runs on: recorded as done only when the probes see it end
        run.record("rollback rolling out", event.requested_by, stage.id,
                   f"{event.service} to {event.to_revision} (operation {event.operation})", request=event.request_id)
        run.commands.append(FollowRollback(run.state.release_id, stage.id, event.service, event.to_revision,
                                           event.operation, event.request_id, {**to_payload(event), "landed": True}))
        return GateOutcome.APPLIED, f"following the rollout of rollback {event.request_id}"
    entry = {"service": event.service, "revision": event.to_revision, "from": event.from_revision,
             "at": run.now, "by": event.requested_by, "why": event.reason, "manual": True,
             "request": event.request_id}
    st.result = {**st.result, "rolled_back": [*rolled_back_as_stored(st.result), entry]}
    moved = f"{event.service} from {event.from_revision or '?'} to {event.to_revision}"
    run.record("rolled back", event.requested_by, stage.id, moved + (f" ({event.reason})" if event.reason else ""),
                request=event.request_id)
    run.notify(NoticeKind.ROLLED_BACK, stage.id,
                f"{run.title()}: {event.requested_by} rolled back {moved} by hand"
                + (f": {event.reason}" if event.reason else "") + f". All traffic of {event.service} now goes "
                f"to {event.to_revision}.")
    if run.state.status in (ReleaseStatus.RUNNING, ReleaseStatus.AWAITING_APPROVAL):
        stop_rolled_back(run, event.requested_by, moved)
    return GateOutcome.APPLIED, f"rolled back {moved}"


def stop_rolled_back(run: Run, by: str, moved: str) -> None:
    """An operator took the traffic away from a release still in flight: it stops there (a replay
    resumes it), or its next traffic stage would hand its canary everything again."""
    state = run.state
    why = f"rolled back by hand by {by}: {moved}"
    for stage in run.pipeline.stages:
        st = state.stages[stage.id]
        if st.status in (StageStatus.RUNNING, StageStatus.WAITING):
            st.reason = why
            run.finish(stage, StageStatus.FAILED)
            state.stopped_at_stage = stage.id
    state.status, state.reason = ReleaseStatus.STOPPED, why
    run.release_locks()
