"""Fan a notice out to every configured channel; one broken channel never silences the others."""
from __future__ import annotations

import logging
from typing import Sequence

from shared.domain.commands import Notify
from shared.app.config import Settings
from shared.adapters.notify.mail import EmailNotifier
from shared.adapters.notify.errors import NotifyError
from shared.adapters.notify.webhook import ChatNotifier, SlackNotifier
from shared.domain.state import ReleaseState

log = logging.getLogger(__name__)


class MultiNotifier:
    def __init__(self, channels: Sequence[object]):
        self.channels = tuple(channels)

    def notify(self, release: ReleaseState, notice: Notify) -> int:
        """Send to all channels; returns how many delivered. Failures are logged, not raised."""
        delivered = 0
        for channel in self.channels:
            try:
                channel.notify(release, notice)
                delivered += 1
            except NotifyError as exc:
                log.warning("notify %s for release %s failed: %s", channel.name, release.release_id, exc)
            except Exception as exc:  # noqa: BLE001 - any channel bug must not stop the others
                # Only the class name: an unknown exception text may carry a URL or secret.
                log.warning("notify %s for release %s failed: %s", channel.name, release.release_id, type(exc).__name__)
        return delivered


def build_notifier(settings: Settings, recipients: Sequence[str] = ()) -> MultiNotifier:
    """Every channel that has its setting filled in. ``recipients`` get the mail notices."""
    channels: list[object] = []
    dashboard = settings.public_base_url
    if settings.smtp_host and recipients:
        channels.append(EmailNotifier(settings.smtp_host, settings.smtp_port, settings.mail_from, recipients, dashboard,
                                      user=settings.smtp_user, password=settings.smtp_password))
    if settings.slack_webhook_url:
        channels.append(SlackNotifier(settings.slack_webhook_url, dashboard))
    if settings.chat_webhook_url:
        channels.append(ChatNotifier(settings.chat_webhook_url, dashboard))
    return MultiNotifier(channels)


def link_senders_from_settings(settings: Settings) -> list[EmailNotifier]:
    """Channels that reach one person: only mail. Links never go to shared chat rooms,
    because a link is a bearer credential for the approver it names."""
    if not settings.smtp_host:
        return []
    return [EmailNotifier(settings.smtp_host, settings.smtp_port, settings.mail_from, (), settings.public_base_url,
                          user=settings.smtp_user, password=settings.smtp_password)]
