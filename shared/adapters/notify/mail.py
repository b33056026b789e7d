"""Plain-text mail through an SMTP relay (smtplib).

STARTTLS is used whenever the relay offers it, and required when there is a login: the
password (from Secret Manager, through the function's secret env) never crosses in clear.
On GCP outbound port 25 is blocked for external destinations
(https://cloud.google.com/compute/docs/tutorials/sending-mail): relays take 587 + STARTTLS.
"""
from __future__ import annotations

import smtplib
import ssl
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
        user: str = "",
        password: str = "",
    ):
        self.host = host
        self.port = port
        self.mail_from = mail_from
        self.recipients = tuple(recipients)
        self.dashboard_url = dashboard_url
        self.timeout_s = timeout_s
        self.user = user
        self._password = password

    def send(self, to: Sequence[str], subject: str, text: str) -> None:
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(to)
        message["Subject"] = subject
        message.set_content(text)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                elif self.user:
                    raise NotifyError(f"mail via {self.host}:{self.port}: the relay offers no STARTTLS; "
                                      "refusing to send the login in clear")
                if self.user:
                    smtp.login(self.user, self._password)
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
