"""The gate: one pure function from (pipeline, state, event, now) to (new state, commands).

No clock, no I/O, no client in here; the dispatcher gathers the inputs, writes the
new state once, and only then carries out the commands.

Rules
-----
* Stages run strictly in pipeline order; the next one starts only when the one
  before it succeeded.
* A failed stage stops the release and names the stage. Only a replay resumes it.
* The optional stage (the chaos smoke, 10a) runs only when asked for, and only
  after the stage before it (staging smoke) passed. While it runs the approval
  cannot be given.
* No stage after the approval, and no stage of a protected environment (prod) wherever
  it sits, starts unless the approval stage succeeded through a valid decision: issued
  for this attempt, not expired, not used before, by an approver on the list who is
  not the person who pushed the commit (identities normalised; an unmatched pusher
  fails closed).
* Duplicated, stale (older attempt or already finished), out-of-order and unknown
  events change nothing. Terminal releases never change.
* One release at a time per environment (staging, prod): a stage of such an
  environment starts only while the release holds that environment's lock;
  otherwise the release is QUEUED. The lock is given back when the release waits
  for approval, stops or ends. When a lock frees, the newest queued release gets
  it and older queued ones are SUPERSEDED (shared/app/locks.py), because deploying an
  older commit after a newer one helps nobody.
* A failed check rolls back the deploy it checked (the nearest earlier deploy stage
  of the same environment that succeeded): a smoke that fails on the canary leaves
  all traffic on the revision that served before.
* A running stage past its deadline fails; a waiting approval past its expiry fails.
  Deadlines are enforced before any event is applied, so a completion arriving
  after the deadline is stale.

Outcome precedence (first that applies wins)
--------------------------------------------
DUPLICATE (event id already applied, or replay id already seen)
> TERMINAL (release succeeded or superseded)
> REFUSED for a pipeline definition other than the one the release pinned
> UNKNOWN_STAGE (the event names a stage the pipeline lacks; a replay of one is recorded and announced)
> STALE (not the current run or attempt of the stage, or the stage is not running or waiting)
> REFUSED (a rule says no: the approval's checks, a finish for an approval stage, replay and chaos rules)
> IGNORED (nothing to do) > APPLIED.
Overdue deadlines found on the way are applied whatever the event's outcome
(``Decision.state`` is then set even though the outcome is not APPLIED).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from shared.domain.commands import Command, NoticeKind, Notify, ReleaseLock
from shared.domain.events import (ApprovalDecided, BakeSkipRequested, CancelRequested, ChaosRequested, Event,
                                  LockGranted, ReleaseStarted, RolledBack, StageFinished, StageReplay, Superseded, Tick)
from shared.domain.gate_approval import on_approval
from shared.domain.gate_bake import on_bake_skip
from shared.domain.gate_completion import on_finished
from shared.domain.gate_flow import on_started, on_tick
from shared.domain.gate_locks import on_lock_granted, on_superseded
from shared.domain.gate_replay import on_cancel, on_chaos, on_replay
from shared.domain.gate_rollback import on_rolled_back
from shared.domain.gate_flow import expire_overdue
from shared.domain.gate_run import GateOutcome, Refusal, Run
from shared.domain.pipeline import Pipeline
from shared.domain.state import APPLIED_EVENTS_KEPT, ReleaseState
from shared.domain.wake import expiry, next_wake

__all__ = ["Decision", "GateOutcome", "decide"]

# Each event type goes to its handler module (one concern each, as argo-rollouts splits its controller).
HANDLERS: dict[type, Callable[[Run, Any], tuple[GateOutcome, str]]] = {
    ReleaseStarted: on_started,
    StageFinished: on_finished,
    ApprovalDecided: on_approval,
    ChaosRequested: on_chaos,
    StageReplay: on_replay,
    Tick: on_tick,
    LockGranted: on_lock_granted,
    Superseded: on_superseded,
    CancelRequested: on_cancel,
    BakeSkipRequested: on_bake_skip,
    RolledBack: on_rolled_back,
}


@dataclass(frozen=True)
class Decision:
    outcome: GateOutcome
    reason: str = ""
    state: ReleaseState | None = None  # None: nothing to write
    # Without a state only idempotent commands come back (re-asking for a lock on a
    # tick, giving back a lock the release no longer needs).
    commands: tuple[Command, ...] = field(default_factory=tuple)


def decide(pipeline: Pipeline, state: ReleaseState, event: Event, now: float) -> Decision:
    """Apply one event to one release. Pure: the input state is never modified."""
    if event.id in state.applied_events:
        return Decision(GateOutcome.DUPLICATE, f"event {event.id} was already applied")
    if isinstance(event, StageReplay) and any(r["replay_id"] == event.replay_id for r in state.replays):
        return Decision(GateOutcome.DUPLICATE, f"replay {event.replay_id} was already handled")
    if state.status.terminal and not isinstance(event, RolledBack):  # a later rollback is still its history
        reason = f"release {state.release_id} is {state.status.value}"
        if isinstance(event, LockGranted):
            # A lock handed to a finished release (it was still in the queue) goes straight back,
            # or the environment would stay taken by a release that will never give it up.
            return Decision(GateOutcome.TERMINAL, reason, None,
                            (ReleaseLock(state.release_id, event.environment),))
        if isinstance(event, StageReplay):
            # The operator must learn why nothing happens; the finished release stays as it is.
            notice = Notify(state.release_id, NoticeKind.REFUSED, event.stage,
                            f"replay {event.replay_id} of release {state.release_id} refused: {reason}"
                            + (f" by {state.superseded_by}" if state.superseded_by else ""))
            return Decision(GateOutcome.TERMINAL, reason, None, (notice,))
        return Decision(GateOutcome.TERMINAL, reason)
    if pipeline.digest != state.pipeline_digest:
        return Decision(GateOutcome.REFUSED, "the pipeline definition differs from the one the release started with")

    new = copy.deepcopy(state)
    run = Run(pipeline, new, now)
    expire_overdue(run)
    try:
        outcome, reason = HANDLERS[type(event)](run, event)
    except Refusal as refusal:
        outcome, reason = refusal.outcome, refusal.reason
        if isinstance(event, StageReplay):
            run.record_replay(event, accepted=False, reason=reason)
    if not run.changed:
        return Decision(outcome, reason, None, tuple(run.commands))
    new.applied_events = (new.applied_events + [event.id])[-APPLIED_EVENTS_KEPT:]
    new.updated_at = now
    new.wake_at = next_wake(new, now)
    new.expire_at = expiry(new, now)
    return Decision(outcome, reason, new, tuple(run.commands))
