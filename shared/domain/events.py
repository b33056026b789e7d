"""Events the dispatcher consumes (past tense), and the notices it sends people.

Every event travels as a Pub/Sub message on ``pipeline-events``, encoded and decoded
by ``shared/domain/wire.py`` only; Cloud Build's own notifications arrive raw on
``cloud-builds`` and are parsed by shared/adapters/cloud_build_notification.py into a
``BuildFinished``. The event id is the Pub/Sub message id,
which a redelivery keeps, so the gate can drop duplicates by id. An event built to
be published has no id yet: pass ``""`` (Pub/Sub assigns it).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from shared.domain.commands import NoticeKind, Notify


class EventType(str, Enum):
    RELEASE_STARTED = "release.started"
    STAGE_FINISHED = "stage.finished"
    APPROVAL_DECIDED = "approval.decided"
    CHAOS_REQUESTED = "chaos.requested"
    STAGE_REPLAY = "stage.replay"
    TICK = "release.tick"
    LOCK_GRANTED = "lock.granted"
    SUPERSEDED = "release.superseded"
    CANCEL_REQUESTED = "release.cancel_requested"
    BAKE_SKIP_REQUESTED = "stage.bake_skip_requested"
    ROLLED_BACK = "release.rolled_back"


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ReleaseStarted:
    id: str
    release_id: str
    type = EventType.RELEASE_STARTED


@dataclass(frozen=True)
class StageFinished:
    """A stage run ended. ``stage_run_id`` names the attempt; older attempts are stale."""

    id: str
    release_id: str
    stage: str
    stage_run_id: str
    outcome: Outcome
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    # ``<kid>.<hmac>`` from the function that published it (shared/domain/completions.py);
    # empty for Cloud Build's own notifications, which are checked against the build instead.
    signature: str = ""
    type = EventType.STAGE_FINISHED


@dataclass(frozen=True)
class ApprovalDecided:
    """A verified approval decision; on_approval checked signature and single use."""

    id: str
    release_id: str
    stage: str
    attempt: int
    nonce: str
    approver: str
    approve: bool
    expires_at: float
    reason: str = ""
    user_agent: str = ""
    type = EventType.APPROVAL_DECIDED


@dataclass(frozen=True)
class ChaosRequested:
    id: str
    release_id: str
    requested_by: str
    request_id: str = ""  # the operator request it carries out (operator_requests/{id})
    type = EventType.CHAOS_REQUESTED


@dataclass(frozen=True)
class StageReplay:
    id: str
    release_id: str
    stage: str
    replay_id: str
    requested_by: str
    reason: str = ""
    type = EventType.STAGE_REPLAY


@dataclass(frozen=True)
class Tick:
    """The sweeper's nudge: enforce deadlines of running stages and approvals."""

    id: str
    release_id: str
    type = EventType.TICK


@dataclass(frozen=True)
class LockGranted:
    """The release now holds the environment's lock (shared/app/locks.py publishes it)."""

    id: str
    release_id: str
    environment: str
    type = EventType.LOCK_GRANTED


@dataclass(frozen=True)
class Superseded:
    """A newer release took the environment while this one was queued for it."""

    id: str
    release_id: str
    environment: str
    superseded_by: str
    reason: str = ""  # set when the release was not superseded by a newer queued one (the version floor)
    type = EventType.SUPERSEDED


@dataclass(frozen=True)
class CancelRequested:
    """An operator stops the release for good (``relctl cancel``); carries their recorded request."""

    id: str
    release_id: str
    requested_by: str
    reason: str
    request_id: str = ""  # the operator request it carries out (operator_requests/{id})
    type = EventType.CANCEL_REQUESTED


@dataclass(frozen=True)
class BakeSkipRequested:
    """An approver ends a check's bake early (``relctl skip-bake``); carries their recorded request.
    The gate records it and sends one more probe that judges the bake so far; only that probe's
    ``stage.finished`` ends the stage (shared/domain/bake_skip.py)."""

    id: str
    release_id: str
    stage: str
    requested_by: str
    reason: str
    request_id: str = ""  # the operator request it carries out (operator_requests/{id})
    type = EventType.BAKE_SKIP_REQUESTED


@dataclass(frozen=True)
class RolledBack:
    """An operator moved a service's traffic back by hand (``relctl rollback``, done by the operator
    function); recorded on the release whose deploy stage last deployed that service, even a
    finished one, so show, notes, dashboard and mail tell it like an automatic rollback."""

    id: str
    release_id: str
    stage: str  # the deploy stage that deployed the service
    service: str
    from_revision: str
    to_revision: str
    requested_by: str
    reason: str
    request_id: str = ""  # the operator request it carries out (operator_requests/{id})
    operation: str = ""  # Cloud Run's operation of the move
    # False: the rollout still runs; the gate has it followed by probes, which publish this event
    # again with landed=True when it ends (only then is the rollback recorded as done).
    landed: bool = True
    type = EventType.ROLLED_BACK


@dataclass(frozen=True)
class BuildFinished:
    """Cloud Build's own notification that a pipeline build ended (topic ``cloud-builds``), as the
    stage.finished it claims. Unsigned by nature: the dispatcher checks it against the build the
    stage recorded before the gate sees ``finished``."""

    finished: StageFinished

    @property
    def id(self) -> str:
        return self.finished.id

    @property
    def release_id(self) -> str:
        return self.finished.release_id


Event = (ReleaseStarted | StageFinished | ApprovalDecided | ChaosRequested | StageReplay | Tick | LockGranted
         | Superseded | CancelRequested | BakeSkipRequested | RolledBack)


@dataclass(frozen=True)
class ReleaseNotice:
    """What people and tools hear on ``release-updates``; never consumed by the dispatcher."""

    release_id: str
    kind: NoticeKind
    stage: str
    message: str
    type = "release.notice"

    @classmethod
    def of(cls, command: Notify) -> "ReleaseNotice":
        return cls(command.release_id, command.kind, command.stage, command.message)

RUN_SECRET_CHARS = 20  # hex: 80 bits; run-<id> stays within Cloud Build's 128-character tags


def run_secret(run_key: str, release_id: str, stage: str, attempt: int) -> str:
    """The unguessable part of a stage-run id: HMAC of the run under the release's random key.

    Deterministic (a repeated start finds what the first one created) yet unpredictable
    without the key, which only the release document holds: a build made in advance
    with a guessed tag, or a forged completion, never carries it."""
    if not run_key:
        return ""
    message = f"{release_id}.{stage}.a{attempt}".encode()
    return hmac.new(run_key.encode(), message, hashlib.sha256).hexdigest()[:RUN_SECRET_CHARS]


def stage_run_id(release_id: str, stage: str, attempt: int, secret: str = "") -> str:
    """Id of one attempt of one stage, ending in the run's secret; safe as a build tag
    (``[\\w][\\w.-]{0,127}``) and env value; revision names hash it (shared/adapters/executors/traffic.py)."""
    return f"{release_id}.{stage}.a{attempt}" + (f".{secret}" if secret else "")


def parse_stage_run_id(value: str) -> tuple[str, str, int]:
    parts = value.rsplit(".", 3)
    if len(parts) == 4 and re.fullmatch(rf"[0-9a-f]{{{RUN_SECRET_CHARS}}}", parts[3]):
        release_id, stage, attempt = parts[:3]
    else:
        release_id, stage, attempt = value.rsplit(".", 2)
    if not attempt.startswith("a") or not attempt[1:].isdigit() or not release_id or not stage:
        raise ValueError(value)
    return release_id, stage, int(attempt[1:])
