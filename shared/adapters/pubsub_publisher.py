"""EventPublisher over Cloud Pub/Sub: the message encoded by the one wire format (shared/domain/wire.py)."""
from __future__ import annotations

from shared.app.config import Settings
from shared.domain.wire import Message, encode


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

    def publish(self, topic: str, message: Message) -> str:
        data, attributes = encode(message)
        path = self.client.topic_path(self.settings.project, topic)
        future = self.client.publish(path, data, **attributes)
        return future.result(timeout=30)
