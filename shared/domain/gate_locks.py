"""The gate's locks: a granted environment lock, a supersession while queued."""
from __future__ import annotations

from shared.domain.commands import NoticeKind, ReleaseLock
from shared.domain.events import LockGranted, Superseded
from shared.domain.state import ReleaseStatus, StageStatus
from shared.domain.gate_run import GateOutcome, Run
from shared.domain.gate_flow import start


def on_lock_granted(run: Run, event: LockGranted) -> tuple[GateOutcome, str]:
    state, env = run.state, event.environment
    if state.status is not ReleaseStatus.QUEUED or state.waiting_for != env:
        if env not in state.locks_held:
            run.commands.append(ReleaseLock(state.release_id, env))  # not needed (any more)
        return GateOutcome.IGNORED, f"not queued for {env}"
    state.locks_held.append(env)
    state.waiting_for = ""
    queued = [s for s in run.pipeline.stages if state.stages[s.id].status is StageStatus.QUEUED]
    run.changed = True
    start(run, queued[0])
    return GateOutcome.APPLIED, f"holds {env}; started {queued[0].label}"


def on_superseded(run: Run, event: Superseded) -> tuple[GateOutcome, str]:
    state = run.state
    if state.status is not ReleaseStatus.QUEUED:
        return GateOutcome.IGNORED, f"release is {state.status.value}, not queued"
    for stage in run.pipeline.stages:
        if state.stages[stage.id].status is StageStatus.QUEUED:
            state.stages[stage.id].status = StageStatus.PENDING
    state.status = ReleaseStatus.SUPERSEDED
    state.superseded_by = event.superseded_by
    state.reason = (f"superseded by release {event.superseded_by}: {event.reason}" if event.reason
                    else f"superseded by release {event.superseded_by} while queued for {event.environment}")
    state.waiting_for = ""
    run.release_locks()
    run.changed = True
    run.notify(NoticeKind.SUPERSEDED, "", f"{run.title()} was {state.reason}; nothing to do.")
    return GateOutcome.APPLIED, state.reason
