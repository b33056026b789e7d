"""The working copy of one decision (``Run``) and what every gate handler shares: the closed
set of outcomes, the refusal that ends a handler, and the small state helpers (timeline, notices,
attempts). Pure, like the whole gate (shared/domain/gate.py routes each event to its handler module).
"""
from __future__ import annotations

from enum import Enum

from shared.domain.commands import Command, NoticeKind, Notify, ReleaseLock
from shared.domain.events import StageReplay, run_secret, stage_run_id
from shared.domain.identity import approval_refusal
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.pipeline_order import is_protected
from shared.domain.state import HISTORY_KEPT, REPLAYS_KEPT, Attempt, ReleaseState, StageState, StageStatus

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


class Refusal(Exception):
    def __init__(self, outcome: GateOutcome, reason: str):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


class Run:
    """The mutable working copy of one decision; never escapes ``decide``."""

    def __init__(self, pipeline: Pipeline, state: ReleaseState, now: float):
        self.pipeline = pipeline
        self.state = state
        self.now = now
        self.commands: list[Command] = []
        self.changed = False

    def known_stage(self, stage_id: str) -> tuple[Stage, StageState]:
        if not self.pipeline.has_stage(stage_id):
            raise Refusal(GateOutcome.UNKNOWN_STAGE, f"unknown stage {stage_id!r}")
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

    def needs_approval(self, stage: Stage) -> bool:
        """After the approval in the file, or of a protected environment wherever it sits."""
        return self.pipeline.needs_approval(stage.id) or is_protected(stage)

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

    def finish(self, stage: Stage, status: StageStatus) -> None:
        st = self.state.stages[stage.id]
        st.status = status
        st.finished_at = self.now
        self.changed = True

    def reset(self, stage: Stage) -> None:
        st = self.state.stages[stage.id]
        if st.status is StageStatus.PENDING:
            return
        self.archive(st)  # the attempt counter stays, so the next stage-run id is new
        st.status = StageStatus.PENDING
        self.changed = True

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
