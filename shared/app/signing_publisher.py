"""The publisher every function publishes through: it signs each ``stage.finished``.

Wrapping the port keeps signing in one place: the dispatcher (a start that failed or
finished at once), the probes and the sweeper publish completions as before, and each
one leaves signed (shared/domain/completions.py). The key ring is built on the first
completion, so a function that never publishes one (on_push, operator) needs no key.
"""
from __future__ import annotations

from typing import Callable

from shared.app.ports import EventPublisher
from shared.domain.approval_tokens import Keyring
from shared.domain.completions import sign_finish
from shared.domain.events import StageFinished
from shared.domain.wire import Message


class SigningPublisher:
    def __init__(self, inner: EventPublisher, keyring: Callable[[], Keyring]):
        self.inner = inner
        self._keyring = keyring

    def publish(self, topic: str, message: Message) -> str:
        if isinstance(message, StageFinished):
            message = sign_finish(message, self._keyring())
        return self.inner.publish(topic, message)

    def __getattr__(self, name: str):
        # What a test reads from the publisher it wrapped (messages, of_type, fail …).
        return getattr(self.inner, name)
