"""Cloud Build's notifications (topic ``cloud-builds``): the Build JSON parsed into the domain's
``BuildFinished``, and the decoder the dispatcher and the dead-letter re-drive use for every message
(Cloud Build's here, ours through the one wire format, shared/domain/wire.py).

A notification carries the Build resource as Cloud Build writes it
(https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build) and the
attributes ``buildId`` and ``status``; the stage-run id rides on the build as a ``run-`` tag.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from typing import Any, Mapping

from shared.domain.errors import MalformedEvent
from shared.domain.events import BuildFinished, Event, Outcome, StageFinished, parse_stage_run_id
from shared.domain.ids import valid_release_id
from shared.domain.wire import decode_event, decode_json


def decode_message(event_id: str, attributes: Mapping[str, str], data: bytes) -> Event | BuildFinished | None:
    """A Pub/Sub message for the dispatcher, decoded once: Cloud Build's (recognised by its ``buildId``
    attribute; None for a status that ends nothing or a build that is not ours) or ours. Raises
    MalformedEvent naming why when it cannot be decoded."""
    if attributes.get("buildId"):
        finished = event_from_build_notification(event_id, attributes, decode_json(data, event_id))
        return BuildFinished(finished) if finished is not None else None
    return decode_event(event_id, attributes, data)


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
