"""A dead letter: a message that will not be applied as it is, kept once with the reason.

One store holds all of them (``dead_letters/{id}``): malformed input the dispatcher
acknowledged, claims the source of truth does not back (an approval no link recorded,
a replay no operator requested), and what Pub/Sub gave up on after its last delivery
attempt (drained from the dead-letter topic). The bytes and attributes are kept as they
arrived, so an operator can re-drive one once the cause is fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

MAX_KEPT_BYTES = 256 * 1024  # a Firestore document holds 1 MiB; our events are a few hundred bytes
# Attributes Pub/Sub adds when it forwards a message to the dead-letter topic
# (https://cloud.google.com/pubsub/docs/handling-failures#track-delivery-attempts).
PUBSUB_DEAD_LETTER_PREFIX = "CloudPubSubDeadLetter"


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the Pub/Sub message id (or a digest of a drained message: Pub/Sub may forward one twice)
    reason: str
    source: str  # "dispatch", "pubsub-dead-letter-topic", or the refused event's type
    received_at: float
    data: bytes = b""
    attributes: Mapping[str, str] = field(default_factory=dict)
    redriven_as: str = ""  # the message id of the re-drive, once done
    redriven_at: float | None = None

    @property
    def truncated(self) -> bool:
        return len(self.data) >= MAX_KEPT_BYTES

    def original_attributes(self) -> dict[str, str]:
        """The attributes the publisher set, without the ones Pub/Sub added when it gave up."""
        return {k: v for k, v in self.attributes.items() if not k.startswith(PUBSUB_DEAD_LETTER_PREFIX)}
