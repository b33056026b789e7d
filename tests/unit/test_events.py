"""Wire formats: our events and Cloud Build's own notifications."""
from __future__ import annotations

import pytest

from shared.domain.errors import MalformedEvent
from shared.adapters.cloud_build_notification import event_from_build_notification
from shared.domain.events import (
    Outcome,
    StageFinished,
    parse_stage_run_id,
    stage_run_id,
)
from shared.domain.wire import from_payload, to_payload

RUN = stage_run_id("acme-app-0123456789ab", "build", 2)
BUILD = {  # the shape Cloud Build publishes on `cloud-builds` (camelCase JSON of the Build resource)
    "id": "b-1", "status": "SUCCESS", "tags": ["rel-acme-app-0123456789ab", f"run-{RUN}", "stage-build"],
    "logUrl": "https://console.cloud.google.com/cloud-build/builds/b-1",
    "startTime": "2026-11-26T10:00:00.500Z", "finishTime": "2026-11-26T10:01:30.750Z",
    "results": {"images": [{"name": "europe-west3-docker.pkg.dev/p/r/noesis2:v1.2.3-abcdef0",
                            "digest": "sha256:" + "d" * 64}]},
}


def test_stage_run_id_round_trips_and_is_a_valid_build_tag():
    assert parse_stage_run_id(RUN) == ("acme-app-0123456789ab", "build", 2)
    assert all(c.isalnum() or c in "._-" for c in RUN)


def test_successful_build_notification_completes_its_stage_run():
    event = event_from_build_notification("m1", {"buildId": "b-1", "status": "SUCCESS"}, BUILD)
    assert isinstance(event, StageFinished) and event.outcome is Outcome.SUCCEEDED
    assert (event.release_id, event.stage, event.stage_run_id) == ("acme-app-0123456789ab", "build", RUN)
    assert event.result["digest"] == "sha256:" + "d" * 64 and event.result["duration_s"] == 90.25
    assert event.result["log_url"].endswith("/b-1")


def test_failed_build_names_the_status_and_detail():
    failed = {**BUILD, "status": "FAILURE", "statusDetail": "step 0 exited 1"}
    event = event_from_build_notification("m2", {"buildId": "b-1", "status": "FAILURE"}, failed)
    assert event.outcome is Outcome.FAILED and event.reason == "build b-1 ended FAILURE: step 0 exited 1"


@pytest.mark.parametrize("status", ["QUEUED", "WORKING", "PENDING"])
def test_non_terminal_statuses_are_not_completions(status):
    assert event_from_build_notification("m3", {"buildId": "b-1", "status": status}, BUILD) is None


def test_builds_of_others_are_ignored_and_a_broken_run_tag_is_malformed():
    assert event_from_build_notification("m4", {"buildId": "x", "status": "SUCCESS"}, {"tags": ["other"]}) is None
    with pytest.raises(MalformedEvent, match="is not a stage-run id"):
        event_from_build_notification("m5", {"buildId": "x", "status": "SUCCESS"}, {"tags": ["run-garbage"]})


def test_our_events_round_trip_and_bad_ones_say_why():
    event = StageFinished("m6", "r", "lint", "r.lint.a1", Outcome.FAILED, "exit 1", {"k": 1})
    assert from_payload("m6", to_payload(event)) == event
    with pytest.raises(MalformedEvent, match="approve must be true or false"):
        from_payload("m7", {"type": "approval.decided", "release_id": "r", "stage": "approval", "attempt": 1,
                               "nonce": "n", "approver": "a", "approve": "yes", "expires_at": 1})


def test_the_dispatchers_decoder_parses_a_build_notification_once_into_a_build_finished():
    """Cloud Build's JSON is read by its adapter only: the wire format knows our messages alone."""
    import json

    from shared.adapters.cloud_build_notification import decode_message
    from shared.domain.errors import MalformedEvent
    from shared.domain.events import BuildFinished
    from shared.domain.wire import decode_event, encode

    attributes, data = {"buildId": "b-1", "status": "SUCCESS"}, json.dumps(BUILD).encode()
    event = decode_message("m1", attributes, data)
    assert isinstance(event, BuildFinished) and event.id == "m1" and event.release_id == "acme-app-0123456789ab"
    assert event.finished == event_from_build_notification("m1", attributes, BUILD)
    with pytest.raises(MalformedEvent):
        decode_event("m1", attributes, data)
    ours = StageFinished("", "acme-app-0123456789ab", "build", RUN, Outcome.SUCCEEDED)
    assert decode_message("m2", *reversed(encode(ours))) == StageFinished("m2", *list(vars(ours).values())[1:])
