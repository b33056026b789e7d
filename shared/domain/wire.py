"""The one wire format: every message we publish is encoded here, every one we read decoded here.

A message is a typed value (an event of ``shared/domain/events.py`` or a
``ReleaseNotice``); on the wire it is a JSON object with a ``type`` field, UTF-8,
keys sorted, plus the attributes ``type`` and ``release_id`` (so a subscription can
filter without reading the data). The event id is not in the payload: it is the
Pub/Sub message id, which a redelivery keeps.

``encode`` is the only way to turn a message into bytes (the publisher port takes
typed messages only, so no payload is spelled out by hand anywhere else; a unit test
greps for payload dict literals outside this module). ``decode`` is the only way back,
for our own messages and for Cloud Build's notifications on ``cloud-builds``; what
cannot be decoded raises MalformedEvent naming why.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict
from typing import Any, Mapping

from shared.domain.ids import valid_release_id
from shared.domain.commands import NoticeKind
from shared.domain.errors import MalformedEvent
from shared.domain.events import (
    ApprovalDecided,
    BakeSkipRequested,
    CancelRequested,
    ChaosRequested,
    Event,
    EventType,
    LockGranted,
    Outcome,
    ReleaseNotice,
    ReleaseStarted,
    RolledBack,
    StageFinished,
    StageReplay,
    Superseded,
    Tick,
    event_from_build_notification,
)

Message = Event | ReleaseNotice

_CLASSES: dict[str, type] = {
    EventType.RELEASE_STARTED.value: ReleaseStarted,
    EventType.STAGE_FINISHED.value: StageFinished,
    EventType.APPROVAL_DECIDED.value: ApprovalDecided,
    EventType.CHAOS_REQUESTED.value: ChaosRequested,
    EventType.STAGE_REPLAY.value: StageReplay,
    EventType.TICK.value: Tick,
    EventType.LOCK_GRANTED.value: LockGranted,
    EventType.SUPERSEDED.value: Superseded,
    EventType.CANCEL_REQUESTED.value: CancelRequested,
    EventType.BAKE_SKIP_REQUESTED.value: BakeSkipRequested,
    EventType.ROLLED_BACK.value: RolledBack,
    ReleaseNotice.type: ReleaseNotice,
}
TYPES = frozenset(_CLASSES)  # every ``type`` that travels (the payload-literal test uses it)

_REQUIRED: dict[str, tuple[str, ...]] = {
    EventType.RELEASE_STARTED.value: ("release_id",),
    EventType.STAGE_FINISHED.value: ("release_id", "stage", "stage_run_id", "outcome"),
    EventType.APPROVAL_DECIDED.value: (
        "release_id", "stage", "attempt", "nonce", "approver", "approve", "expires_at",
    ),
    EventType.CHAOS_REQUESTED.value: ("release_id", "requested_by"),
    EventType.STAGE_REPLAY.value: ("release_id", "stage", "replay_id", "requested_by"),
    EventType.TICK.value: ("release_id",),
    EventType.LOCK_GRANTED.value: ("release_id", "environment"),
    EventType.SUPERSEDED.value: ("release_id", "environment", "superseded_by"),
    EventType.CANCEL_REQUESTED.value: ("release_id", "requested_by", "reason"),
    EventType.BAKE_SKIP_REQUESTED.value: ("release_id", "stage", "requested_by", "request_id"),
    EventType.ROLLED_BACK.value: ("release_id", "stage", "service", "to_revision", "requested_by", "request_id"),
    ReleaseNotice.type: ("release_id", "kind"),
}
_STRINGS = ("release_id", "stage", "stage_run_id", "replay_id", "requested_by", "nonce", "approver",
            "environment", "superseded_by", "reason", "user_agent", "message", "request_id", "signature",
            "service", "from_revision", "to_revision")


def type_of(message: Message) -> str:
    return message.type.value if isinstance(message.type, EventType) else message.type


def to_payload(message: Message) -> dict[str, Any]:
    """The JSON object of a typed message (without the event id, which Pub/Sub assigns)."""
    if type(message) not in _CLASSES.values():
        raise TypeError(f"only typed messages are published, not {type(message).__name__}")
    data = asdict(message)
    data.pop("id", None)
    data["type"] = type_of(message)
    for key, value in data.items():
        if isinstance(value, (Outcome, NoticeKind)):
            data[key] = value.value
    return data


def encode(message: Message) -> tuple[bytes, dict[str, str]]:
    """Pub/Sub data and attributes of a typed message."""
    data = to_payload(message)
    return json.dumps(data, sort_keys=True).encode(), {"type": data["type"], "release_id": message.release_id}


def from_payload(event_id: str, data: Any) -> Message:
    """A typed message from its JSON object, or MalformedEvent saying why."""
    if not isinstance(data, Mapping):
        raise MalformedEvent(f"event {event_id}: payload must be a JSON object")
    kind = data.get("type")
    if kind not in _CLASSES:
        raise MalformedEvent(f"event {event_id}: unknown type {kind!r}")
    missing = [k for k in _REQUIRED[kind] if data.get(k) in (None, "")]
    if missing:
        raise MalformedEvent(f"event {event_id} ({kind}): missing {', '.join(missing)}")
    cls = _CLASSES[kind]
    fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "id"}
    try:
        if cls is StageFinished:
            fields["outcome"] = Outcome(fields["outcome"])
            if not isinstance(fields.get("result", {}), Mapping):
                raise ValueError("result must be an object")
        if cls is ApprovalDecided:
            fields["attempt"] = int(fields["attempt"])
            fields["expires_at"] = float(fields["expires_at"])
            if not isinstance(fields["approve"], bool):
                raise ValueError("approve must be true or false")
        if cls is RolledBack and not isinstance(fields.get("landed", True), bool):
            raise ValueError("landed must be true or false")
        if cls is ReleaseNotice:
            fields["kind"] = NoticeKind(fields["kind"])
            fields.setdefault("stage", "")
            fields.setdefault("message", "")
        for key in _STRINGS:
            if key in fields and not isinstance(fields[key], str):
                raise ValueError(f"{key} must be a string")
        for key in ("release_id", "superseded_by"):  # they name documents: checked here, not at Firestore
            if fields.get(key) and not valid_release_id(fields[key]):
                raise ValueError(f"{key} {fields[key][:100]!r} cannot be a release id")
    except (ValueError, TypeError) as exc:
        raise MalformedEvent(f"event {event_id} ({kind}): {exc}") from None
    return cls(**fields) if cls is ReleaseNotice else cls(id=event_id, **fields)


def decode_json(raw: bytes, event_id: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"event {event_id}: data is not JSON ({exc})") from None


def decode(event_id: str, attributes: Mapping[str, str], data: bytes) -> Message | None:
    """A Pub/Sub message as a typed value: ours (``pipeline-events``, ``release-updates``)
    or Cloud Build's (``cloud-builds``, recognised by its ``buildId`` attribute; None for
    a status that ends nothing or a build that is not ours)."""
    if attributes.get("buildId"):
        return event_from_build_notification(event_id, attributes, decode_json(data, event_id))
    return from_payload(event_id, decode_json(data, event_id))


def decode_event(event_id: str, attributes: Mapping[str, str], data: bytes) -> Event | None:
    """``decode`` for the dispatcher: a notice on the events topic is malformed there."""
    message = decode(event_id, attributes, data)
    if isinstance(message, ReleaseNotice):
        raise MalformedEvent(f"event {event_id}: a {ReleaseNotice.type} is not an event for the dispatcher")
    return message


def unwrap_push(event_id: str, envelope: Any) -> tuple[dict[str, str], bytes]:
    """Attributes and data of a Pub/Sub push as a CloudEvent carries it
    (``{"message": {"data": <base64>, "attributes": {...}, "messageId": ...}, "subscription": ...}``)."""
    message = envelope.get("message") if isinstance(envelope, Mapping) else None
    if not isinstance(message, Mapping):
        raise MalformedEvent(f"event {event_id}: CloudEvent has no Pub/Sub message")
    try:
        data = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise MalformedEvent(f"event {event_id}: message data is not base64") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(isinstance(v, str) for v in attributes.values()):
        raise MalformedEvent(f"event {event_id}: message attributes are not a map of strings")
    return dict(attributes), data
