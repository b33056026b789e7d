"""EventPublisher over Cloud Pub/Sub: JSON data, the event type also as an attribute."""
from __future__ import annotations

import json
from typing import Any, Mapping

from shared.app.config import Settings


class PubSubPublisher:
    def __init__(self, settings: Settings, client=None):
        self.settings = settings
        self._client = client

    @property
    def client(self):
        if self._client is None:
            # Imported lazily: the HTTP functions that never publish skip its import cost.
            from google.cloud import pubsub_v1

            self._client = pubsub_v1.PublisherClient(
                batch_settings=pubsub_v1.types.BatchSettings(max_messages=1)
            )
        return self._client

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str] | None = None) -> str:
        attrs = dict(attributes or {})
        if "type" in data:
            attrs.setdefault("type", str(data["type"]))
        path = self.client.topic_path(self.settings.project, topic)
        future = self.client.publish(path, json.dumps(data, sort_keys=True).encode(), **attrs)
        return future.result(timeout=30)
