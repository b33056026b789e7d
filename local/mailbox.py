"""A real SMTP server on loopback that keeps what it receives: where the demo's mail goes."""
from __future__ import annotations

import threading
import time
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller

from local.emulators import free_port


class _Handler:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        body = msg.get_body(("plain", "html"))
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), body.get_content() if body else ""))
        return "250 OK"


class Mailbox:
    def __init__(self) -> None:
        self.port = free_port()
        self.handler = _Handler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> "Mailbox":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def bodies_for(self, recipient: str) -> list[str]:
        """Every mail to ``recipient`` so far, oldest first (a resend adds one)."""
        with self.handler.lock:
            return [body for rcpts, body in self.handler.messages if recipient in rcpts]

    def wait_for(self, recipient: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.handler.lock:
                for rcpts, body in reversed(self.handler.messages):
                    if recipient in rcpts:
                        return body
            time.sleep(0.1)
        raise TimeoutError(f"no mail for {recipient} within {timeout_s:.0f}s")
