"""Commands the gate issues (imperative names); adapters carry them out after the state write.

Each carries deterministic ids (the stage-run id), so carrying one out twice is safe:
the executors look for an existing build, execution or revision tagged with it first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Mapping


@dataclass(frozen=True)
class StartStage:
    release_id: str
    stage: str
    stage_run_id: str
    attempt: int
    kind: str
    # Pinned inputs: identical for every attempt of the release (tag, version, commit), and
    # ``digest``, the image the release's build reported, once a stage before this one did.
    inputs: Mapping[str, Any] = field(default_factory=dict)
    # Never stored with its batch: True only for the start carried out by the handler that wrote
    # the batch, well within the batch's lease. The run id was made by that write (the gate
    # mints one per attempt), so no build, execution or revision can carry it yet and the
    # executor may skip its lookup. A recovered batch is read back without it: the lookup then
    # finds what the dead handler may have started.
    known_new: bool = field(default=False, compare=False)
    name = "start_stage"


@dataclass(frozen=True)
class RequestApproval:
    release_id: str
    stage: str
    attempt: int
    approvers: tuple[str, ...]
    expires_at: float
    digest: str = ""  # the image being approved, as the build reported it
    name = "request_approval"


@dataclass(frozen=True)
class AcquireLock:
    """Take the environment's lock or join its queue; idempotent (re-sent on every tick)."""

    release_id: str
    environment: str
    created_at: float
    name = "acquire_lock"


@dataclass(frozen=True)
class ReleaseLock:
    """Give the environment back; the newest queued release gets it, older queued ones are superseded."""

    release_id: str
    environment: str
    name = "release_lock"


@dataclass(frozen=True)
class RollBack:
    """Move the services of a deploy stage back to the revision that served before it."""

    release_id: str
    stage: str  # the deploy stage being undone
    stage_run_id: str
    services: tuple[str, ...]
    # service -> the revision recorded as serving before this release's first deploy attempt:
    # never a revision of a failed attempt. Empty for a service nothing served before.
    targets: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""  # why, recorded with the rollback
    name = "roll_back"


@dataclass(frozen=True)
class RecordDurations:
    """Count a succeeded release's stage durations into its application's medians (the ETA of the
    next releases). Safe to repeat: the application's record keeps the releases it counted."""

    release_id: str
    durations: Mapping[str, float] = field(default_factory=dict)
    name = "record_durations"


@dataclass(frozen=True)
class EndBakeEarly:
    """Send the one probe that judges a check's bake so far and, if it passes, ends it early
    (an approver's ``relctl skip-bake``). The probe's ``stage.finished`` decides, not this."""

    release_id: str
    stage: str
    stage_run_id: str
    requested_by: str
    reason: str = ""
    name = "end_bake_early"


class NoticeKind(str, Enum):
    STAGE_FAILED = "stage_failed"
    APPROVAL_NEEDED = "approval_needed"
    RELEASE_FINISHED = "release_finished"
    REFUSED = "refused"
    SUPERSEDED = "superseded"  # a newer release took over while this one was queued: nothing to replay
    ROLLED_BACK = "rolled_back"  # an operator moved traffic back by hand (relctl rollback)
    STALLED = "stalled"  # not moved for longer than its stage's timeout (sent once per stall by the sweeper)


@dataclass(frozen=True)
class Notify:
    release_id: str
    kind: NoticeKind
    stage: str
    message: str
    name = "notify"


@dataclass(frozen=True)
class FollowRollback:
    """Follow a rollback by hand whose rollout still runs with probes, like any rollout; when it
    ends, the probe publishes ``landed`` (the RolledBack event, landed=True, as a JSON payload)."""

    release_id: str
    stage: str  # the deploy stage the rollback is recorded on
    service: str
    revision: str
    operation: str
    request_id: str
    landed: Mapping[str, Any] = field(default_factory=dict)
    name = "follow_rollback"


Command = (StartStage | RequestApproval | Notify | AcquireLock | ReleaseLock | RollBack | RecordDurations
           | EndBakeEarly | FollowRollback)
_BY_NAME = {cls.name: cls for cls in (StartStage, RequestApproval, Notify, AcquireLock, ReleaseLock, RollBack,
                                      RecordDurations, EndBakeEarly, FollowRollback)}


def command_to_dict(command: Command) -> dict[str, Any]:
    data = asdict(command)
    data["command"] = command.name
    if isinstance(command, Notify):
        data["kind"] = command.kind.value
    if isinstance(command, RequestApproval):
        data["approvers"] = list(command.approvers)
    if isinstance(command, StartStage):
        data["inputs"] = dict(command.inputs)
        del data["known_new"]
    if isinstance(command, RollBack):
        data["services"] = list(command.services)
        data["targets"] = dict(command.targets)
    if isinstance(command, RecordDurations):
        data["durations"] = dict(command.durations)
    return data


def command_from_dict(data: Mapping[str, Any]) -> Command:
    data = dict(data)
    cls = _BY_NAME[data.pop("command")]
    if cls is Notify:
        data["kind"] = NoticeKind(data["kind"])
    if cls is RequestApproval:
        data["approvers"] = tuple(data["approvers"])
    if cls is RollBack:
        data["services"] = tuple(data["services"])
    if cls is StartStage:
        data.pop("known_new", None)  # only the handler that made the run id may say so, never a stored batch
    return cls(**data)
