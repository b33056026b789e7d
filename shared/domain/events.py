"""Events the dispatcher consumes (past tense), and the notices it sends people.

Every event travels as a Pub/Sub message on ``pipeline-events``, encoded and decoded
by ``shared/domain/wire.py`` only; Cloud Build's own notifications arrive raw on
``cloud-builds`` and are translated here. The event id is the Pub/Sub message id,
which a redelivery keeps, so the gate can drop duplicates by id. An event built to
be published has no id yet: pass ``""`` (Pub/Sub assigns it).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Mapping

from shared.domain.commands import NoticeKind, Notify
from shared.domain.errors import MalformedEvent
from shared.domain.ids import valid_release_id


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

# Cloud Build notification statuses (topic `cloud-builds`, attribute `status`).
BUILD_SUCCESS = {"SUCCESS"}
BUILD_FAILURES = {"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
RUN_TAG_PREFIX = "run-"  # the build tag that carries the stage-run id


def event_from_build_notification(
    event_id: str, attributes: Mapping[str, str], build: Mapping[str, Any]
) -> StageFinished | None:
    """Translate a Cloud Build notification; None for non-terminal or foreign builds.

    The stage-run id rides on the build as a tag, so the notification alone says
    which release, stage and attempt it completes.
    """
    check_build_shape(event_id, build)
    status = attributes.get("status") or build.get("status", "")
    run_tags = [t for t in build.get("tags") or [] if t.startswith(RUN_TAG_PREFIX)]
    if not run_tags or status not in BUILD_SUCCESS | BUILD_FAILURES:
        return None
    stage_run_id = run_tags[0][len(RUN_TAG_PREFIX):]
    try:
        release_id, stage, _attempt = parse_stage_run_id(stage_run_id)
    except ValueError:
        raise MalformedEvent(f"event {event_id}: build tag {run_tags[0]!r} is not a stage-run id") from None
    if not valid_release_id(release_id):
        raise MalformedEvent(f"event {event_id}: build tag {run_tags[0]!r} names no possible release")
    build_id = attributes.get("buildId") or build.get("id", "")
    # What the last step wrote to $BUILDER_OUTPUT/output (test counts, chaos verdicts);
    # our own keys win over it so a step cannot fake the status.
    result = {**builder_output(build), "build_id": build_id, "status": status}
    images = [{"name": i.get("name", ""), "digest": i.get("digest", "")}
              for i in (build.get("results") or {}).get("images", []) if isinstance(i, Mapping)]
    if images:  # what a build pushed, as Cloud Build reports it: the approval binds the digest
        result["images"] = images
        result["digest"] = images[0]["digest"]
    if build.get("logUrl"):
        result["log_url"] = build["logUrl"]
    duration = build_duration_s(build)
    if duration is not None:
        result["duration_s"] = duration
    if status in BUILD_SUCCESS:
        return StageFinished(event_id, release_id, stage, stage_run_id, Outcome.SUCCEEDED, "", result)
    detail = build.get("statusDetail") or ""
    reason = f"build {build_id} ended {status}" + (f": {detail}" if detail else "")
    return StageFinished(event_id, release_id, stage, stage_run_id, Outcome.FAILED, reason, result)


# The parts of a Build resource we read, and the JSON type each must have
# (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build).
_BUILD_FIELDS = {"id": str, "status": str, "statusDetail": str, "logUrl": str, "startTime": str, "finishTime": str,
                 "tags": list, "results": Mapping}
_RESULTS_FIELDS = {"images": list, "buildStepOutputs": list}


def check_build_shape(event_id: str, build: Any) -> None:
    """A notification's data must be a Build as Cloud Build writes it; anything else is
    malformed (acknowledged and dead-lettered once) instead of failing on every delivery."""
    if not isinstance(build, Mapping):
        raise MalformedEvent(f"event {event_id}: Cloud Build notification data must be a Build object, "
                             f"got a JSON {type(build).__name__}")
    for fields, value, where in ((_BUILD_FIELDS, build, "build"), (_RESULTS_FIELDS, build.get("results") or {},
                                                                     "build.results")):
        for key, kind in fields.items():
            if value.get(key) is not None and not isinstance(value[key], kind):
                raise MalformedEvent(f"event {event_id}: {where}.{key} must be a JSON "
                                     f"{'object' if kind is Mapping else kind.__name__}")
    if not all(isinstance(t, str) for t in build.get("tags") or []):
        raise MalformedEvent(f"event {event_id}: build.tags must be strings")


def _timestamp(value: Any) -> float | None:
    """Epoch seconds from an RFC 3339 time as Cloud Build writes it (nanoseconds, 'Z')."""
    if not isinstance(value, str) or not value:
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value.strip())
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    seconds = datetime.fromisoformat(match.group(1) + zone).timestamp()
    return seconds + float(match.group(2) or 0)


def build_duration_s(build: Mapping[str, Any]) -> float | None:
    start, finish = _timestamp(build.get("startTime")), _timestamp(build.get("finishTime"))
    if start is None or finish is None or finish < start:
        return None
    return round(finish - start, 3)


def builder_output(build: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object the last step that wrote one left in ``results.buildStepOutputs``.

    Cloud Build keeps each step's ``$BUILDER_OUTPUT/output`` as bytes, which the JSON
    form of a Build carries base64-encoded. Anything that is not a JSON object is ignored.
    """
    results = build.get("results")
    outputs = results.get("buildStepOutputs") if isinstance(results, Mapping) else None
    if not isinstance(outputs, list):
        return {}
    for raw in reversed(outputs):
        if not isinstance(raw, str) or not raw:
            continue
        try:
            text = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            text = raw
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return dict(value) if isinstance(value, dict) else {}
    return {}


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
