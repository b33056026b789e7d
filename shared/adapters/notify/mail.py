"""Plain-text mail through an SMTP relay (smtplib)."""
from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Sequence

from shared.domain.commands import Notify
from shared.adapters.notify.messages import format_notice
from shared.adapters.notify.errors import NotifyError
from shared.domain.state import ReleaseState


class EmailNotifier:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        mail_from: str,
        recipients: Sequence[str] = (),
        dashboard_url: str = "",
        timeout_s: float = 10.0,
    ):
        self.host = host
        self.port = port
        self.mail_from = mail_from
        self.recipients = tuple(recipients)
        self.dashboard_url = dashboard_url
        self.timeout_s = timeout_s

    def send(self, to: Sequence[str], subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message.set_content(text)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"mail to {len(to)} recipient(s) via {self.host}:{self.port} failed: {type(exc).__name__}") from None

    def send_link(self, approver: str, subject: str, text: str) -> None:
        """Approval links are personal: only the approver's own mailbox gets one."""
        self.send([approver], subject, text)

    def notify(self, release: ReleaseState, notice: Notify) -> None:
        if not self.recipients:
            return
        subject, text = format_notice(release, notice, self.dashboard_url)
        self.send(self.recipients, subject, text)
