"""An HTTP function of functions/main.py under functions-framework's test client, with the events it
publishes readable: the events topic is created on the Pub/Sub emulator with one pull subscription,
and ``client.pull()`` returns what arrived there (decoded JSON payloads)."""
from __future__ import annotations

import json

from functions_framework import create_app
from google.cloud import pubsub_v1

from shared import bootstrap


def http_function_with_events(target: str, project: str, prefix: str):
    """The caller has set RELEASE_EVENTS_TOPIC to ``{prefix}events`` (and the rest of its settings)."""
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"{prefix}events")
    publisher.create_topic(name=topic)
    sub = subscriber.subscription_path(project, f"{prefix}sub")
    subscriber.create_subscription(name=sub, topic=topic)
    bootstrap.reset()
    client = create_app(target, "functions/main.py").test_client()
    client.pull = lambda: [
        json.loads(m.message.data)
        for m in subscriber.pull(subscription=sub, max_messages=10, timeout=2).received_messages
    ]
    return client
