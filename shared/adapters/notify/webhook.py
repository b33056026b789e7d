"""Slack and Google Chat incoming webhooks: a JSON POST with a timeout and one retry.

The webhook URL is itself the credential (whoever has it can post), so it never
appears in an error or a log line; errors name the channel and the HTTP status only.
"""
from __future__ import annotations

import time

import requests

from shared.domain.commands import Notify
from shared.adapters.notify.errors import NotifyError
from shared.adapters.notify.messages import format_notice
from shared.domain.state import ReleaseState

TIMEOUT_S = (3.05, 10.0)  # connect, read
RETRY_PAUSE_S = 0.5


class WebhookNotifier:
    """Posts ``{"text": ...}``, which both Slack and Google Chat incoming webhooks accept."""

    name = "webhook"

    def __init__(self, url: str, dashboard_url: str = "", session: requests.Session | None = None):
        if not url:
            raise ValueError(f"{self.name}: webhook URL is empty")
        self._url = url
        self.dashboard_url = dashboard_url
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url=<hidden>)"

    def payload(self, subject: str, text: str) -> dict:
        return {"text": f"*{subject}*\n{text}"}

    def send(self, subject: str, text: str) -> None:
        body = self.payload(subject, text)
        problem = ""
        for attempt in (1, 2):
            try:
                response = self._session.post(self._url, json=body, timeout=TIMEOUT_S)
            except requests.RequestException as exc:
                # str(exc) would contain the URL; the class name is enough to act on.
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # a client error does not get better by repeating it
            if attempt == 1:
                time.sleep(RETRY_PAUSE_S)
        raise NotifyError(f"{self.name} webhook did not accept the message: {problem}")

    def notify(self, release: ReleaseState, notice: Notify) -> None:
        self.send(*format_notice(release, notice, self.dashboard_url))


class SlackNotifier(WebhookNotifier):
    name = "slack"


class ChatNotifier(WebhookNotifier):
    """Google Chat: same ``text`` field; Chat renders ``*bold*`` like Slack does."""

    name = "google-chat"
