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
import hmac
from dataclasses import dataclass, field
from enum import Enum

from shared.domain.bake_skip import skip_refusal
from shared.domain.commands import (
    AcquireLock,
    Command,
    EndBakeEarly,
    NoticeKind,
    Notify,
    RecordDurations,
    ReleaseLock,
    RequestApproval,
    RollBack,
    StartStage,
)
from shared.domain.events import (
    ApprovalDecided,
    BakeSkipRequested,
    CancelRequested,
    ChaosRequested,
    Event,
    LockGranted,
    Outcome,
    ReleaseStarted,
    RolledBack,
    StageFinished,
    StageReplay,
    Superseded,
    Tick,
    run_secret,
    stage_run_id,
)
from shared.domain.identity import approval_refusal, normalise
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.pipeline_order import is_protected
from shared.domain.progress import succeeded_durations
from shared.domain.wake import expiry, next_wake
from shared.domain.state import (
    APPLIED_EVENTS_KEPT,
    HISTORY_KEPT,
    NONCES_KEPT,
    REPLAYS_KEPT,
    Attempt,
    ReleaseState,
    ReleaseStatus,
    StageState,
    StageStatus,
)

DEFAULT_APPROVAL_EXPIRY_S = 24 * 3600
LOCKED_ENVIRONMENTS = ("staging", "prod")
TIMELINE_KEPT = 200


class GateOutcome(str, Enum):
    UNKNOWN_RELEASE = "unknown_release"  # decided by the service: there is no state to pass in
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TERMINAL = "terminal"
    UNKNOWN_STAGE = "unknown_stage"
    STALE = "stale"
    REFUSED = "refused"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Decision:
    outcome: GateOutcome
    reason: str = ""
    state: ReleaseState | None = None  # None: nothing to write
    # Without a state only idempotent commands come back (re-asking for a lock on a
    # tick, giving back a lock the release no longer needs).
    commands: tuple[Command, ...] = field(default_factory=tuple)


class _Refusal(Exception):
    def __init__(self, outcome: GateOutcome, reason: str):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


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
    run = _Run(pipeline, new, now)
    run.expire_overdue()
    try:
        outcome, reason = run.apply(event)
    except _Refusal as refusal:
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


def serving_before(deployed: StageState, services: tuple[str, ...]) -> dict[str, str]:
    """Per service, the revision recorded as serving before the FIRST attempt of a deploy that
    recorded one: a replayed deploy after a failed canary must not go back to that canary."""
    found: dict[str, str] = {}
    attempts = [a.result for a in deployed.history] + [deployed.result]
    for result in attempts:
        for target in result.get("revisions") or []:
            service, before = str(target.get("service", "")), str(target.get("serving_before") or "")
            if service in services and before and service not in found:
                found[service] = before
    return found


class _Run:
    """The mutable working copy of one decision; never escapes ``decide``."""

    def __init__(self, pipeline: Pipeline, state: ReleaseState, now: float):
        self.pipeline = pipeline
        self.state = state
        self.now = now
        self.commands: list[Command] = []
        self.changed = False

    # -- dispatch -------------------------------------------------------------
    def apply(self, event: Event) -> tuple[GateOutcome, str]:
        handler = {
            ReleaseStarted: self.on_started,
            StageFinished: self.on_finished,
            ApprovalDecided: self.on_approval,
            ChaosRequested: self.on_chaos,
            StageReplay: self.on_replay,
            Tick: self.on_tick,
            LockGranted: self.on_lock_granted,
            Superseded: self.on_superseded,
            CancelRequested: self.on_cancel,
            BakeSkipRequested: self.on_bake_skip,
            RolledBack: self.on_rolled_back,
        }[type(event)]
        return handler(event)

    def on_started(self, event: ReleaseStarted) -> tuple[GateOutcome, str]:
        if any(s.attempt for s in self.state.stages.values()) or self.state.status is not ReleaseStatus.RUNNING:
            return GateOutcome.IGNORED, "release already underway"
        self.advance(0)
        return GateOutcome.APPLIED, f"started {self.pipeline.stages[0].label}"

    def on_finished(self, event: StageFinished) -> tuple[GateOutcome, str]:
        stage, st = self.known_stage(event.stage)
        if not hmac.compare_digest(st.stage_run_id.encode(), event.stage_run_id.encode()):
            # The current run's id ends in its secret: a guessed or older id is not it.
            raise _Refusal(GateOutcome.STALE, f"{event.stage_run_id} is not the current run of {stage.label}")
        reported, recorded = event.result.get("build_id"), st.result.get("build_id")
        if reported and reported != recorded:
            # A notification counts only for the build this run recorded; before the handle is
            # recorded it cannot be matched, and the executor's own poll decides.
            raise _Refusal(GateOutcome.STALE, f"build {reported} is not the build {stage.label} recorded "
                                              f"({recorded or 'none yet'})")
        if st.status is not StageStatus.RUNNING:
            raise _Refusal(GateOutcome.STALE, f"{stage.label} is already {st.status.value}")
        if stage.kind is StageKind.APPROVAL:  # never RUNNING today; kept so it can never finish this way
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} finishes only through a signed approval")
        st.result = {**st.result, **dict(event.result)}
        bake = event.result.get("bake")
        early = bake.get("ended_early") if isinstance(bake, dict) else None
        if isinstance(early, dict):  # the skip probe's verdict (relctl skip-bake): on the timeline either way
            passed = event.outcome is Outcome.SUCCEEDED
            self.record("bake ended early" if passed else "bake not ended early", str(early.get("by", "")), stage.id,
                        str(early.get("reason", "")) if passed else event.reason)
        if event.outcome is Outcome.SUCCEEDED:
            self.finish(stage, StageStatus.SUCCEEDED)
            self.advance(self.pipeline.index(stage.id) + 1)
            return GateOutcome.APPLIED, f"{stage.label} succeeded"
        self.fail(stage, event.reason or "failed")
        return GateOutcome.APPLIED, f"{stage.label} failed"

    def on_approval(self, event: ApprovalDecided) -> tuple[GateOutcome, str]:
        stage, st = self.known_stage(event.stage)
        state = self.state
        if st.status is not StageStatus.WAITING or event.attempt != st.attempt:
            raise _Refusal(GateOutcome.STALE, f"{stage.label} is not waiting for this approval request")
        if stage.kind is not StageKind.APPROVAL:
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} is not an approval stage")
        if event.nonce in state.used_nonces:
            raise _Refusal(GateOutcome.REFUSED, "this approval link was already used")
        if state.status is not ReleaseStatus.AWAITING_APPROVAL:
            raise _Refusal(GateOutcome.REFUSED, f"release is {state.status.value}, not awaiting approval")
        if self.now > event.expires_at or (st.deadline is not None and self.now > st.deadline):
            raise _Refusal(GateOutcome.REFUSED, "the approval link has expired")
        refused = approval_refusal(event.approver, stage.params["approvers"], state.pusher, state.pushed_by)
        if refused:
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label}: {refused}")
        state.used_nonces = (state.used_nonces + [event.nonce])[-NONCES_KEPT:]
        decision = {
            "approver": event.approver,
            "decision": "approved" if event.approve else "rejected",
            "at": self.now,
            "reason": event.reason,
            "nonce": event.nonce,
            "attempt": event.attempt,
            "user_agent": event.user_agent,
        }
        st.result = {**st.result, **{k: v for k, v in decision.items() if k != "nonce"}}
        self.record(decision["decision"], event.approver, stage.id, event.reason, attempt=event.attempt,
                    via=event.user_agent[:80])
        if not event.approve:
            self.fail(stage, f"rejected by {event.approver}" + (f": {event.reason}" if event.reason else ""))
            return GateOutcome.APPLIED, f"{stage.label} rejected"
        state.approval = decision
        self.finish(stage, StageStatus.SUCCEEDED)
        for optional in self.pipeline.stages[: self.pipeline.index(stage.id)]:
            if optional.optional and state.stages[optional.id].status is StageStatus.PENDING:
                state.stages[optional.id].status = StageStatus.SKIPPED
        self.advance(self.pipeline.index(stage.id) + 1)
        return GateOutcome.APPLIED, f"approved by {event.approver}"

    def on_chaos(self, event: ChaosRequested) -> tuple[GateOutcome, str]:
        optional = [s for s in self.pipeline.stages if s.optional]
        if not optional:
            raise _Refusal(GateOutcome.REFUSED, "this pipeline has no optional chaos stage")
        stage = optional[0]
        index = self.pipeline.index(stage.id)
        before = self.pipeline.stages[index - 1]
        st = self.state.stages[stage.id]
        if self.state.stages[before.id].status is not StageStatus.SUCCEEDED:
            raise _Refusal(GateOutcome.REFUSED, f"chaos runs only after {before.label} passed")
        if st.status is not StageStatus.PENDING or self.state.chaos_requested_by:
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} was already requested or decided ({st.status.value})")
        if self.state.status is not ReleaseStatus.AWAITING_APPROVAL:
            raise _Refusal(GateOutcome.REFUSED, f"release is {self.state.status.value}; chaos needs it awaiting approval")
        self.state.chaos_requested_by = event.requested_by
        self.record("chaos requested", event.requested_by, stage.id, "")
        self.start(stage)
        return GateOutcome.APPLIED, f"{stage.label} requested by {event.requested_by}"

    def on_replay(self, event: StageReplay) -> tuple[GateOutcome, str]:
        state = self.state
        stage, st = self.known_stage(event.stage)
        if state.status is ReleaseStatus.QUEUED:
            raise _Refusal(GateOutcome.REFUSED, f"release is queued for {state.waiting_for}; replay when it runs")
        busy = [s for s in self.pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING]
        if busy:
            raise _Refusal(GateOutcome.REFUSED, f"{busy[0].label} is running; replay when it ends")
        if self.needs_approval(stage) and not self.approved():
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} needs a valid approval first")
        if st.status in (StageStatus.PENDING, StageStatus.SKIPPED) and not (stage.optional and state.chaos_requested_by):
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} has not run yet")
        index = self.pipeline.index(stage.id)
        for earlier in self.pipeline.stages[:index]:
            status = state.stages[earlier.id].status
            # An optional stage blocks only once it ran (the chaos smoke was asked for and failed).
            passed = status is StageStatus.SUCCEEDED or (earlier.optional and status in (
                StageStatus.PENDING, StageStatus.SKIPPED))
            if not passed:
                raise _Refusal(GateOutcome.REFUSED, f"{earlier.label} has not passed; replay it first")
        if stage.kind is StageKind.APPROVAL and st.status is StageStatus.SUCCEEDED:
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} is already approved")
        self.record_replay(event, accepted=True, reason=event.reason)
        for later in self.pipeline.stages[index + 1:]:
            self.reset(later)
        state.stopped_at_stage = ""
        state.reason = ""
        state.status = ReleaseStatus.RUNNING
        if stage.kind is StageKind.APPROVAL:
            state.approval = {}
        elif self.pipeline.approval_index is not None and index < self.pipeline.approval_index:
            state.approval = {}  # earlier results changed: the approval must be given again
        self.advance(index, replay=True)
        return GateOutcome.APPLIED, f"{stage.label} replayed by {event.requested_by}"

    def on_tick(self, event: Tick) -> tuple[GateOutcome, str]:
        if self.state.status is ReleaseStatus.QUEUED:
            # A grant may have been lost with a crashed handler: ask again (idempotent).
            env = self.state.waiting_for
            self.commands.append(AcquireLock(self.state.release_id, env, self.state.created_at))
            return GateOutcome.IGNORED, f"still queued for {env}"
        return GateOutcome.IGNORED, "nothing overdue"

    def on_lock_granted(self, event: LockGranted) -> tuple[GateOutcome, str]:
        state, env = self.state, event.environment
        if state.status is not ReleaseStatus.QUEUED or state.waiting_for != env:
            if env not in state.locks_held:
                self.commands.append(ReleaseLock(state.release_id, env))  # not needed (any more)
            return GateOutcome.IGNORED, f"not queued for {env}"
        state.locks_held.append(env)
        state.waiting_for = ""
        queued = [s for s in self.pipeline.stages if state.stages[s.id].status is StageStatus.QUEUED]
        self.changed = True
        self.start(queued[0])
        return GateOutcome.APPLIED, f"holds {env}; started {queued[0].label}"

    def on_cancel(self, event: CancelRequested) -> tuple[GateOutcome, str]:
        """Stop for good: nothing new starts, the locks go back, and a canary the release put in
        prod is rolled back, so prod keeps serving what it served before. A run still going at
        Cloud Build or Cloud Run ends on its own; its completion finds the release terminal."""
        state = self.state
        why = f"cancelled by {event.requested_by}" + (f": {event.reason}" if event.reason else "")
        for stage in self.pipeline.stages:
            st = state.stages[stage.id]
            if st.status in (StageStatus.RUNNING, StageStatus.WAITING):
                st.reason = why
                self.finish(stage, StageStatus.FAILED)
            elif st.status in (StageStatus.PENDING, StageStatus.QUEUED):
                st.status = StageStatus.SKIPPED
        if state.status is not ReleaseStatus.SUCCEEDED:
            for stage in reversed(self.pipeline.stages):
                st = state.stages[stage.id]
                if (stage.kind is StageKind.DEPLOY and stage.environment == "prod"
                        and st.status is StageStatus.SUCCEEDED):
                    self.roll_back(stage, f"cancelled: {why}")
        state.stopped_at_stage = state.stopped_at_stage or next(
            (s.id for s in self.pipeline.stages if state.stages[s.id].reason == why), "")
        if state.waiting_for:  # queued: leave the queue, or the lock could be handed to this release
            self.commands.append(ReleaseLock(state.release_id, state.waiting_for))
        state.status, state.reason, state.waiting_for = ReleaseStatus.CANCELLED, why, ""
        self.release_locks()
        self.record("cancelled", event.requested_by, state.stopped_at_stage, event.reason)
        self.notify(NoticeKind.STAGE_FAILED, state.stopped_at_stage, f"{self.title()} was {why}. Nothing runs any more; "
                    "prod keeps what served before.")
        return GateOutcome.APPLIED, why

    def on_bake_skip(self, event: BakeSkipRequested) -> tuple[GateOutcome, str]:
        """Record an approver's wish to end a bake early and send the probe that judges it; that
        probe's finish decides (shared/domain/bake_skip.py), so a failing check never passes."""
        stage, st = self.known_stage(event.stage)
        status, why = skip_refusal(self.pipeline, self.state, stage.id, event.requested_by)
        if status:
            raise _Refusal(GateOutcome.REFUSED, why)
        st.result = {**st.result, "bake_skip": {"by": event.requested_by, "at": self.now, "reason": event.reason,
                                                "request": event.request_id}}
        self.record("bake skip requested", event.requested_by, stage.id, event.reason, request=event.request_id)
        self.commands.append(EndBakeEarly(self.state.release_id, stage.id, st.stage_run_id, event.requested_by,
                                          event.reason))
        return GateOutcome.APPLIED, f"end of the bake of {stage.label} asked by {event.requested_by}"

    def on_rolled_back(self, event: RolledBack) -> tuple[GateOutcome, str]:
        """A rollback done by hand through the operator function, recorded on the deploy stage that
        deployed the service (finished releases too) like the gate's own, and announced."""
        stage, st = self.known_stage(event.stage)
        if stage.kind is not StageKind.DEPLOY:
            raise _Refusal(GateOutcome.REFUSED, f"{stage.label} is not a deploy stage")
        done = st.result.get("rolled_back") or []
        if any(r.get("request") == event.request_id for r in done):
            return GateOutcome.IGNORED, f"rollback {event.request_id} is already recorded"
        entry = {"service": event.service, "revision": event.to_revision, "from": event.from_revision,
                 "at": self.now, "by": event.requested_by, "why": event.reason, "manual": True,
                 "request": event.request_id}
        st.result = {**st.result, "rolled_back": [*done, entry]}
        moved = f"{event.service} from {event.from_revision or '?'} to {event.to_revision}"
        self.record("rolled back", event.requested_by, stage.id, moved + (f" ({event.reason})" if event.reason else ""),
                    request=event.request_id)
        self.notify(NoticeKind.ROLLED_BACK, stage.id,
                    f"{self.title()}: {event.requested_by} rolled back {moved} by hand"
                    + (f": {event.reason}" if event.reason else "") + f". All traffic of {event.service} now goes "
                    f"to {event.to_revision}.")
        return GateOutcome.APPLIED, f"rolled back {moved}"

    def on_superseded(self, event: Superseded) -> tuple[GateOutcome, str]:
        state = self.state
        if state.status is not ReleaseStatus.QUEUED:
            return GateOutcome.IGNORED, f"release is {state.status.value}, not queued"
        for stage in self.pipeline.stages:
            if state.stages[stage.id].status is StageStatus.QUEUED:
                state.stages[stage.id].status = StageStatus.PENDING
        state.status = ReleaseStatus.SUPERSEDED
        state.superseded_by = event.superseded_by
        state.reason = (f"superseded by release {event.superseded_by}: {event.reason}" if event.reason
                        else f"superseded by release {event.superseded_by} while queued for {event.environment}")
        state.waiting_for = ""
        self.release_locks()
        self.changed = True
        self.notify(NoticeKind.SUPERSEDED, "", f"{self.title()} was {state.reason}; nothing to do.")
        return GateOutcome.APPLIED, state.reason

    # -- transitions ----------------------------------------------------------
    def known_stage(self, stage_id: str) -> tuple[Stage, StageState]:
        if not self.pipeline.has_stage(stage_id):
            raise _Refusal(GateOutcome.UNKNOWN_STAGE, f"unknown stage {stage_id!r}")
        return self.pipeline.stage(stage_id), self.state.stages[stage_id]

    def approved(self) -> bool:
        gate = self.pipeline.approval_index
        if gate is None:
            return False  # nothing to approve with: only stages that need no approval run
        stage = self.pipeline.stages[gate]
        approval = self.state.approval
        return (
            self.state.stages[stage.id].status is StageStatus.SUCCEEDED
            and approval.get("decision") == "approved"
            and not approval_refusal(approval.get("approver", ""), stage.params["approvers"], self.state.pusher,
                                     self.state.pushed_by)
        )

    def advance(self, index: int, replay: bool = False) -> None:
        """Start the first stage from ``index`` that should run, or finish the release."""
        state = self.state
        for stage in self.pipeline.stages[index:]:
            st = state.stages[stage.id]
            forced, replay = replay, False  # only the replayed stage itself runs again
            if st.status is StageStatus.SUCCEEDED and not forced:
                continue
            if stage.optional and not state.chaos_requested_by:
                continue  # stays pending: it may still be requested until the approval
            if stage.kind is StageKind.APPROVAL:
                if st.status is StageStatus.WAITING and not forced:
                    state.status = ReleaseStatus.AWAITING_APPROVAL
                    self.release_locks()
                    return
                self.request_approval(stage)
                return
            self.start(stage)
            return
        state.status = ReleaseStatus.SUCCEEDED
        self.release_locks()
        self.commands.append(RecordDurations(state.release_id, succeeded_durations(state, self.pipeline)))
        for stage in self.pipeline.stages:
            if state.stages[stage.id].status is StageStatus.PENDING:
                state.stages[stage.id].status = StageStatus.SKIPPED
        self.notify(NoticeKind.RELEASE_FINISHED, "", f"{self.title()} is complete: {state.tag} takes all traffic.")

    def archive(self, st: StageState) -> None:
        """Keep the finished attempt in the history and clear the stage for the next one."""
        if st.attempt and st.status not in (StageStatus.PENDING, StageStatus.QUEUED):
            st.history = (st.history + [
                Attempt(st.attempt, st.stage_run_id, st.status.value, st.started_at, st.finished_at, st.reason, st.result)
            ])[-HISTORY_KEPT:]
        st.stage_run_id, st.started_at, st.finished_at, st.deadline = "", None, None, None
        st.reason, st.result = "", {}

    def begin_attempt(self, stage: Stage, status: StageStatus, timeout_s: int) -> StageState:
        st = self.state.stages[stage.id]
        self.archive(st)
        st.attempt += 1
        st.stage_run_id = stage_run_id(self.state.release_id, stage.id, st.attempt,
                                       run_secret(self.state.run_key, self.state.release_id, stage.id, st.attempt))
        st.status = status
        st.started_at = self.now
        st.finished_at = None
        st.deadline = self.now + timeout_s
        st.reason = ""
        st.result = {}
        self.changed = True
        return st

    def needs_approval(self, stage: Stage) -> bool:
        """After the approval in the file, or of a protected environment wherever it sits."""
        return self.pipeline.needs_approval(stage.id) or is_protected(stage)

    def start(self, stage: Stage) -> None:
        if self.needs_approval(stage) and not self.approved():
            # By meaning, not position: validation refuses files where this could happen, and
            # a pinned definition that slipped through still never runs prod unapproved: the
            # release stops there, saying why.
            self.fail(stage, "needs a valid approval for this attempt first; none was given")
            return
        env = stage.environment
        if env in LOCKED_ENVIRONMENTS and env not in self.state.locks_held:
            self.archive(self.state.stages[stage.id])
            self.state.stages[stage.id].status = StageStatus.QUEUED
            self.state.status = ReleaseStatus.QUEUED
            self.state.waiting_for = env
            self.changed = True
            self.commands.append(AcquireLock(self.state.release_id, env, self.state.created_at))
            return
        st = self.begin_attempt(stage, StageStatus.RUNNING, stage.timeout_s)
        self.state.status = ReleaseStatus.RUNNING
        inputs = {
            "release_id": self.state.release_id,
            "tag": self.state.tag,
            "version": self.state.version,
            "commit": self.state.commit,
            "repo": self.state.repo,
        }
        self.commands.append(StartStage(self.state.release_id, stage.id, st.stage_run_id, st.attempt, stage.kind.value, inputs))

    def request_approval(self, stage: Stage) -> None:
        expiry = int(stage.params.get("expiry_s", DEFAULT_APPROVAL_EXPIRY_S))
        st = self.begin_attempt(stage, StageStatus.WAITING, expiry)
        self.state.status = ReleaseStatus.AWAITING_APPROVAL
        self.release_locks()  # nobody waits behind a release that waits for a human
        approvers = tuple(a for a in stage.params["approvers"] if normalise(a) != self.state.pusher)
        self.commands.append(RequestApproval(self.state.release_id, stage.id, st.attempt, approvers, st.deadline,
                                             self.image_digest(stage)))
        self.notify(NoticeKind.APPROVAL_NEEDED, stage.id, f"{self.title()} waits for approval; links went to {', '.join(approvers)}.")

    def image_digest(self, before: Stage) -> str:
        """The digest the latest stage before ``before`` reported for the image (build, push)."""
        for earlier in reversed(self.pipeline.stages[: self.pipeline.index(before.id)]):
            digest = self.state.stages[earlier.id].result.get("digest")
            if digest:
                return str(digest)
        return ""

    def finish(self, stage: Stage, status: StageStatus) -> None:
        st = self.state.stages[stage.id]
        st.status = status
        st.finished_at = self.now
        self.changed = True

    def fail(self, stage: Stage, reason: str) -> None:
        st = self.state.stages[stage.id]
        st.reason = reason
        self.finish(stage, StageStatus.FAILED)
        rolled, again = "", stage.id
        if stage.kind is StageKind.CHECK:
            before = len(self.commands)
            self.roll_back_checked_deploy(stage, reason)
            for command in self.commands[before:]:
                if isinstance(command, RollBack):
                    to = ", ".join(f"{s} to {command.targets.get(s) or 'the last good tagged revision'}"
                                   for s in command.services)
                    rolled = f" Rolled back {command.stage}: all traffic of {to} (what served before this release)."
                    # The checked canary is gone: a replay of the check has nothing to check. Replaying
                    # the deploy puts the canary back (the gate allows it: every stage before it passed).
                    again = command.stage
        self.state.status = ReleaseStatus.STOPPED
        self.release_locks()
        self.state.stopped_at_stage = stage.id
        self.state.reason = f"{stage.label} failed: {reason}"
        self.notify(
            NoticeKind.STAGE_FAILED,
            stage.id,
            f"{self.title()} stopped: {stage.label} failed: {reason}.{rolled} "
            f"Gate: {stage.gate or 'the release stops'}. Fix the cause, then run "
            f"`relctl replay {self.state.release_id} {again} --reason \"…\"`"
            + (" (or push a new commit)." if again != stage.id else "."),
        )

    def reset(self, stage: Stage) -> None:
        st = self.state.stages[stage.id]
        if st.status is StageStatus.PENDING:
            return
        self.archive(st)  # the attempt counter stays, so the next stage-run id is new
        st.status = StageStatus.PENDING
        self.changed = True

    def expire_overdue(self) -> None:
        for stage in self.pipeline.stages:
            st = self.state.stages[stage.id]
            if st.deadline is None or self.now <= st.deadline:
                continue
            if st.status is StageStatus.RUNNING:
                self.fail(stage, f"timed out after {stage.timeout_s}s")
            elif st.status is StageStatus.WAITING and self.state.status is ReleaseStatus.AWAITING_APPROVAL:
                self.record("approval expired", "", stage.id, "nobody decided in time", attempt=st.attempt)
                self.fail(stage, "approval expired")

    def roll_back_checked_deploy(self, check: Stage, reason: str = "") -> None:
        for earlier in reversed(self.pipeline.stages[: self.pipeline.index(check.id)]):
            if earlier.kind is StageKind.DEPLOY and earlier.environment == check.environment:
                if self.state.stages[earlier.id].status is StageStatus.SUCCEEDED:
                    self.roll_back(earlier, f"{check.label} failed: {reason}" if reason else f"{check.label} failed")
                return

    def roll_back(self, deploy: Stage, why: str) -> None:
        """Every service the deploy changed, background ones included, back to what served before it."""
        deployed = self.state.stages[deploy.id]
        services = tuple(str(s) for s in [*deploy.params["services"], *(deploy.params.get("background_services") or ())])
        self.commands.append(RollBack(self.state.release_id, deploy.id, deployed.stage_run_id, services,
                                      serving_before(deployed, services), why))

    def release_locks(self) -> None:
        for env in self.state.locks_held:
            self.commands.append(ReleaseLock(self.state.release_id, env))
        self.state.locks_held = []

    def record(self, kind: str, by: str, stage: str, reason: str, **extra) -> None:
        """One line of the release's timeline (who did what, when, why)."""
        entry = {"at": self.now, "kind": kind, "by": by, "stage": stage, "reason": reason, **extra}
        self.state.timeline = (self.state.timeline + [entry])[-TIMELINE_KEPT:]
        self.changed = True

    def record_replay(self, event: StageReplay, accepted: bool, reason: str) -> None:
        self.state.replays_refused += 0 if accepted else 1
        self.state.replays = self.state.replays[-(REPLAYS_KEPT - 1):] + [
            {
                "replay_id": event.replay_id,
                "stage": event.stage,
                "requested_by": event.requested_by,
                "accepted": accepted,
                "reason": reason,
                "at": self.now,
            }
        ]
        resend = self.pipeline.has_stage(event.stage) and self.pipeline.stage(event.stage).kind is StageKind.APPROVAL
        self.record(("approval links re-sent" if resend else "replay") + ("" if accepted else " refused"),
                    event.requested_by, event.stage, reason, request=event.replay_id)
        if not accepted:
            self.notify(NoticeKind.REFUSED, event.stage, f"replay {event.replay_id} of {self.title()} refused: {reason}")

    def notify(self, kind: NoticeKind, stage: str, message: str) -> None:
        self.commands.append(Notify(self.state.release_id, kind, stage, message))

    def title(self) -> str:
        return f"release {self.state.release_id} ({self.state.tag})"
