"""`dispatch`, `drain_dead_letters` and `sweep` driven as real CloudEvents through
functions-framework's test client (as functions-framework's own tests do:
``cloudevents.conversion.to_structured`` + ``create_app(target, source, "cloudevent")``),
wired by shared/bootstrap.py against the emulators. What the client answers is what
Pub/Sub sees: 200 acknowledges, 500 makes it redeliver."""
from __future__ import annotations

import base64
import json
import time

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud import pubsub_v1

from shared import bootstrap
from shared.domain.events import StageFinished, Outcome, Tick
from shared.domain.wire import encode
from tests.unit.gate_helpers import PIPELINE
from tests.unit.test_approval_service import KEYS, waiting_release

pytestmark = pytest.mark.emulators
SOURCE = "functions/main.py"


@pytest.fixture
def env(emulators, unique_prefix, monkeypatch):
    project = emulators["project"]
    for name, value in {"RELEASE_PROJECT": project, "RELEASE_COLLECTION_PREFIX": unique_prefix,
                        "RELEASE_EVENTS_TOPIC": f"{unique_prefix}events", "RELEASE_UPDATES_TOPIC": f"{unique_prefix}updates",
                        "RELEASE_APPROVAL_KEYS": KEYS, "RELEASE_SMTP_HOST": ""}.items():
        monkeypatch.setenv(name, value)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(project, f"{unique_prefix}events-pull")
    for topic in ("events", "updates"):
        publisher.create_topic(name=publisher.topic_path(project, f"{unique_prefix}{topic}"))
    subscriber.create_subscription(name=subscription, topic=publisher.topic_path(project, f"{unique_prefix}events"))

    def published() -> list[dict]:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        return [json.loads(m.message.data) for m in response.received_messages]

    bootstrap.reset()
    yield published
    bootstrap.reset()


def client(target: str):
    return create_app(target, SOURCE, "cloudevent").test_client()


def pubsub_event(message_id: str, data: bytes, attributes: dict[str, str]) -> tuple[dict, bytes]:
    """A Pub/Sub push as Eventarc delivers it, in structured CloudEvent form."""
    event = CloudEvent({"id": message_id, "source": "//pubsub.googleapis.com/projects/p/topics/t",
                        "type": "google.cloud.pubsub.topic.v1.messagePublished", "specversion": "1.0"},
                       {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes,
                                    "messageId": message_id},
                        "subscription": "projects/p/subscriptions/s"})
    return to_structured(event)


def post(target: str, message_id: str, data: bytes, attributes: dict[str, str] | None = None):
    headers, body = pubsub_event(message_id, data, attributes or {})
    return client(target).post("/", headers=headers, data=body)


def test_a_malformed_event_is_acknowledged_and_kept_once(env):
    for _ in range(2):  # the redelivery of an acknowledged message would be kept once
        assert post("dispatch", "bad-1", b'{"type": "stage.finished", "release_id": "r"}').status_code == 200
    (letter,) = bootstrap.dead_letters().list()
    assert letter.id == "bad-1" and "missing stage, stage_run_id, outcome" in letter.reason


def test_an_event_for_an_unknown_release_is_acknowledged(env):
    data, attributes = encode(Tick("", "no-such-release"))
    assert post("dispatch", "tick-1", data, attributes).status_code == 200
    assert bootstrap.dead_letters().list() == []


def test_a_release_whose_pinned_definition_is_missing_is_redelivered_not_dead_lettered(env):
    state, _ = waiting_release("c" * 40)
    assert bootstrap.store().create(state)  # the pinned definition was never stored
    data, attributes = encode(Tick("", state.release_id))
    assert post("dispatch", "tick-2", data, attributes).status_code == 500
    assert bootstrap.dead_letters().list() == []


def test_a_broken_setting_is_redelivered_until_the_operator_fixes_it(env, monkeypatch):
    data, attributes = encode(Tick("", "no-such-release"))
    monkeypatch.setenv("RELEASE_APPROVAL_KEYS", "no-colon-here")
    bootstrap.reset()
    assert post("dispatch", "tick-3", data, attributes).status_code == 500
    monkeypatch.setenv("RELEASE_APPROVAL_KEYS", KEYS)
    bootstrap.reset()
    assert post("dispatch", "tick-3", data, attributes).status_code == 200  # the redelivery, once fixed


def test_what_pubsub_gave_up_on_is_drained_and_can_be_re_driven(env):
    finished = StageFinished("", "r-9", "lint", "r-9.lint.a1", Outcome.SUCCEEDED)
    data, attributes = encode(finished)
    forwarded = {**attributes, "CloudPubSubDeadLetterSourceDeliveryCount": "10",
                 "CloudPubSubDeadLetterSourceSubscription": "dispatch-sub",
                 "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-11-30T20:15:50.748Z"}
    assert post("drain_dead_letters", "dlq-1", data, forwarded).status_code == 200
    (letter,) = bootstrap.dead_letters().list()
    assert "gave up after 10 delivery attempts" in letter.reason
    bootstrap.dead_letters().redrive(letter.id)
    assert env() == [{**json.loads(data)}]


def test_sweep_ticks_a_release_whose_approval_is_overdue(env):
    state, _ = waiting_release("d" * 40)
    # An overdue approval: its deadline passed, and so did the wake_at the gate set to it.
    state.stages["approval"].deadline = state.wake_at = time.time() - 10
    bootstrap.store().save_pipeline(PIPELINE)
    assert bootstrap.store().create(state)
    headers, body = to_structured(CloudEvent({"id": "tick", "source": "//pubsub.googleapis.com/projects/p/topics/tick",
                                              "type": "google.cloud.pubsub.topic.v1.messagePublished"},
                                             {"message": {"data": base64.b64encode(b"tick").decode()}}))
    assert client("sweep").post("/", headers=headers, data=body).status_code == 200
    assert env() == [{"type": "release.tick", "release_id": state.release_id}]
