"""Notifications: mail (SMTP), Slack and Google Chat incoming webhooks, and a fan-out."""
from shared.adapters.notify.mail import EmailNotifier
from shared.adapters.notify.errors import NotifyError
from shared.adapters.notify.messages import format_approval_link, format_notice
from shared.adapters.notify.multi import MultiNotifier, link_senders_from_settings, build_notifier
from shared.adapters.notify.webhook import ChatNotifier, SlackNotifier, WebhookNotifier

__all__ = [
    "ChatNotifier",
    "EmailNotifier",
    "MultiNotifier",
    "NotifyError",
    "SlackNotifier",
    "WebhookNotifier",
    "format_approval_link",
    "format_notice",
    "link_senders_from_settings",
    "build_notifier",
]
