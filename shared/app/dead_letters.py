"""The dead-letter store's application API: keep, drain, list, re-drive.

``relctl`` (and the operator function) list the store and re-drive one letter: its
bytes are decoded again by the current code and, when they now make an event, that
event is published on ``pipeline-events`` as a new message; the letter records the
new message id, so a letter is re-driven once. The gate decides on it like on any
event (a claim still not backed is refused again, a completion already applied is
stale), so a re-drive can never do more than the original delivery could have.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Mapping

from shared.app.config import Settings
from shared.app.ports import Clock, DeadLetterStore, EventPublisher, MessageDecoder
from shared.domain.dead_letters import PUBSUB_DEAD_LETTER_PREFIX, DeadLetter
from shared.domain.errors import MalformedEvent, PipelineError
from shared.domain.events import BuildFinished
from shared.domain.wire import decode_event

log = logging.getLogger(__name__)
GAVE_UP_SOURCE = "pubsub-dead-letter-topic"


class DeadLetterNotFound(PipelineError):
    """No dead letter has this id."""


class DeadLetters:
    def __init__(self, store: DeadLetterStore, publisher: EventPublisher, clock: Clock, settings: Settings,
                 decode: MessageDecoder = decode_event):
        """``decode``: the dispatcher's decoder (the composition root wires the one that also parses
        Cloud Build's notifications); the wire format's own knows only our messages."""
        self.store = store
        self.publisher = publisher
        self.clock = clock
        self.settings = settings
        self.decode = decode

    def keep(self, letter_id: str, reason: str, source: str, data: bytes = b"",
             attributes: Mapping[str, str] | None = None) -> bool:
        """Record a message once (create-only by id); False when it is kept already."""
        return self.store.record(DeadLetter(letter_id, reason, source, self.clock.now(), data, dict(attributes or {})))

    def drain(self, message_id: str, attributes: Mapping[str, str], data: bytes) -> None:
        """A message Pub/Sub forwarded to the dead-letter topic after its last delivery attempt.

        Pub/Sub may forward the same message twice with new message ids, so the letter's id is
        a digest of what the publisher sent (data and its own attributes) and the original
        publish time: the same message is kept once."""
        original = {k: v for k, v in attributes.items() if not k.startswith(PUBSUB_DEAD_LETTER_PREFIX)}
        published = attributes.get(f"{PUBSUB_DEAD_LETTER_PREFIX}SourceTopicPublishTime", "")
        digest = hashlib.sha256(repr((sorted(original.items()), published)).encode() + data).hexdigest()[:32]
        attempts = attributes.get(f"{PUBSUB_DEAD_LETTER_PREFIX}SourceDeliveryCount", "?")
        subscription = attributes.get(f"{PUBSUB_DEAD_LETTER_PREFIX}SourceSubscription", "?")
        reason = f"Pub/Sub gave up after {attempts} delivery attempts on subscription {subscription}"
        if self.keep(f"gave-up-{digest}", reason, GAVE_UP_SOURCE, data, attributes):
            log.error("dead letter gave-up-%s (message %s): %s", digest, message_id, reason)

    def list(self, limit: int = 50) -> list[DeadLetter]:
        return self.store.list(limit)

    def redrive(self, letter_id: str) -> str:
        """Publish the letter's event again; returns the new message id."""
        letter = self.store.get(letter_id)
        if letter is None:
            raise DeadLetterNotFound(f"no dead letter {letter_id!r}")
        if letter.redriven_as:
            raise PipelineError(f"dead letter {letter_id} was re-driven already as message {letter.redriven_as}")
        if letter.truncated:
            raise PipelineError(f"dead letter {letter_id} was kept truncated; it cannot be re-driven")
        try:
            event = self.decode(letter_id, letter.original_attributes(), letter.data)
        except MalformedEvent as exc:
            raise PipelineError(f"dead letter {letter_id} still cannot be decoded: {exc}") from None
        if event is None:
            raise PipelineError(f"dead letter {letter_id} is a build notification that ends no stage")
        if isinstance(event, BuildFinished):
            event = event.finished  # the stage.finished it claims, unsigned (the dispatcher believes only signed ones)
        message_id = self.publisher.publish(self.settings.events_topic, event)
        self.store.mark_redriven(letter_id, message_id, self.clock.now())
        log.warning("dead letter %s re-driven as message %s", letter_id, message_id)
        return message_id
