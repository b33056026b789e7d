"""`dispatch`, `drain_dead_letters` and `sweep` driven as real CloudEvents through
functions-framework's test client (as functions-framework's own tests do:
``cloudevents.conversion.to_structured`` + ``create_app(target, source, "cloudevent")``),
wired by shared/bootstrap.py against the emulators. What the client answers is what
Pub/Sub sees: 200 acknowledges, 500 makes it redeliver."""
from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent
from functions_framework import create_app
from google.cloud import pubsub_v1

from shared.domain.wake import next_wake
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
    state.stages["approval"].deadline = time.time() - 10
    state.wake_at = next_wake(state, time.time())  # as the gate sets it on every write
    bootstrap.store().save_pipeline(PIPELINE)
    assert bootstrap.store().create(state)
    headers, body = to_structured(CloudEvent({"id": "tick", "source": "//pubsub.googleapis.com/projects/p/topics/tick",
                                              "type": "google.cloud.pubsub.topic.v1.messagePublished"},
                                             {"message": {"data": base64.b64encode(b"tick").decode()}}))
    assert client("sweep").post("/", headers=headers, data=body).status_code == 200
    assert env() == [{"type": "release.tick", "release_id": state.release_id}]


def test_what_dispatch_keeps_failing_reaches_the_store_through_pubsubs_dead_letter_topic(env, emulators, unique_prefix,
                                                                                       monkeypatch):
    """Real push delivery on the emulator: a setting the operator must fix makes dispatch answer 500
    on every attempt; after the subscription's last attempt Pub/Sub forwards the message to the
    dead-letter topic, whose push subscription feeds drain_dead_letters, which keeps it in the
    one store; once the setting is fixed, the letter is re-driven."""
    from werkzeug.serving import make_server

    monkeypatch.setenv("RELEASE_APPROVAL_KEYS", "no-colon-here")
    bootstrap.reset()
    servers = {name: make_server("127.0.0.1", 0, create_app(name, SOURCE, "cloudevent"), threaded=True)
               for name in ("dispatch", "drain_dead_letters")}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    try:
        project = emulators["project"]
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(project, f"{unique_prefix}events")
        dead = publisher.topic_path(project, f"{unique_prefix}dead-letter")
        publisher.create_topic(name=dead)
        url = {name: f"http://127.0.0.1:{s.server_port}/" for name, s in servers.items()}
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, f"{unique_prefix}to-drain"), "topic": dead,
            "push_config": {"push_endpoint": url["drain_dead_letters"]}})
        subscriber.create_subscription(request={
            "name": subscriber.subscription_path(project, f"{unique_prefix}to-dispatch"), "topic": topic,
            "push_config": {"push_endpoint": url["dispatch"]}, "ack_deadline_seconds": 10,
            "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5},
            "retry_policy": {"minimum_backoff": {"seconds": 0}, "maximum_backoff": {"seconds": 1}}})
        data, attributes = encode(Tick("", "no-such-release"))
        publisher.publish(topic, data, **attributes).result(10)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not bootstrap.dead_letters().list():
            time.sleep(0.5)
        (letter,) = bootstrap.dead_letters().list()
        assert letter.source == "pubsub-dead-letter-topic" and "gave up after 5 delivery attempts" in letter.reason
        assert letter.data == data and letter.original_attributes() == attributes
        monkeypatch.setenv("RELEASE_APPROVAL_KEYS", KEYS)  # the operator fixes the setting
        bootstrap.reset()
        message_id = bootstrap.dead_letters().redrive(letter.id)
        assert bootstrap.dead_letters().store.get(letter.id).redriven_as == message_id
        seen: list[dict] = []
        for _ in range(5):  # a pull may return fewer messages than are there
            seen += env()
            if len(seen) >= 2:
                break
        assert [m["type"] for m in seen] == ["release.tick", "release.tick"]  # the original, then the re-drive
    finally:
        for server in servers.values():
            server.shutdown()
