"""Notifiers against real receivers on loopback: an SMTP server (aiosmtpd) and an HTTP webhook."""
from __future__ import annotations

import email
import email.policy
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from local.emulators import free_port
from shared.domain.commands import NoticeKind, Notify
from shared.app.config import Settings
from shared.adapters.notify import ChatNotifier, EmailNotifier, MultiNotifier, NotifyError, SlackNotifier, build_notifier
from shared.adapters.notify import webhook
from tests.unit.test_approval_service import waiting_release


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


class Receiver:
    """An incoming-webhook endpoint: records JSON bodies, answers with scripted statuses."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.statuses: list[int] = []  # consumed in order; 200 once empty
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                receiver.paths.append(self.path)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, secret_path: str = "services/T000/B000/s3cretTOKEN") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{secret_path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch):
    monkeypatch.setattr(webhook, "RETRY_PAUSE_S", 0.01)


@pytest.fixture
def release():
    return waiting_release()[0]


def failed_notice(release):
    return Notify(release.release_id, NoticeKind.STAGE_FAILED, "staging-smoke",
                  f"release {release.release_id} stopped: stage 5 'staging-smoke' failed: GET / returned 503.")


def test_mail_link_arrives(smtp):
    port, inbox = smtp
    link = "http://127.0.0.1:8083/?token=v1.k1." + "a" * 300  # longer than a mail line may be
    EmailNotifier("127.0.0.1", port, "release-bot@localhost").send_link("boss@example.com", "Approval needed", f"Open:\n\n{link}\n")
    (message,) = inbox.messages
    assert inbox.envelopes == [("release-bot@localhost", ["boss@example.com"])]
    assert message["To"] == "boss@example.com" and message["Subject"] == "Approval needed"
    assert link in message.get_content()  # intact after transfer encoding


def test_mail_notice_names_release_stage_and_next_step(smtp, release):
    port, inbox = smtp
    EmailNotifier("127.0.0.1", port, "bot@localhost", ["ops@example.com", "dev@example.com"]).notify(release, failed_notice(release))
    (message,) = inbox.messages
    body = message.get_content()
    assert message["Subject"].strip() == f"Release {release.release_id} stopped at stage staging-smoke ({release.tag})"
    assert "GET / returned 503" in body and "Stage:   staging-smoke" in body
    assert f'relctl replay {release.release_id} staging-smoke --reason "what was fixed"' in body
    assert inbox.envelopes[0][1] == ["ops@example.com", "dev@example.com"]


def test_stalled_notice_names_the_relctl_commands_and_the_dashboard(smtp, receiver, release):
    port, inbox = smtp
    notice = Notify(release.release_id, NoticeKind.STALLED, "approval",
                    f"release {release.release_id} has not moved for 1450 min: stage approval is waiting, longer "
                    "than its timeout of 1440 min")
    EmailNotifier("127.0.0.1", port, "bot@localhost", ["ops@example.com"],
                  dashboard_url="http://127.0.0.1:8090").notify(release, notice)
    ChatNotifier(receiver.url(), dashboard_url="http://127.0.0.1:8090").notify(release, notice)
    (message,) = inbox.messages
    assert message["Subject"].strip() == f"Release {release.release_id} has not moved at stage approval ({release.tag})"
    for text in (message.get_content(), receiver.bodies[0]["text"]):
        assert "has not moved for 1450 min" in text
        assert f"relctl show {release.release_id}" in text
        assert f'relctl cancel {release.release_id} --reason "stalled at approval"' in text
        assert f"http://127.0.0.1:8090/release/{release.release_id}" in text


def test_mail_to_a_closed_port_is_a_notify_error():
    with pytest.raises(NotifyError, match="ConnectionRefusedError"):
        EmailNotifier("127.0.0.1", free_port(), "bot@localhost", timeout_s=2).send(["a@example.com"], "s", "t")


@pytest.mark.parametrize("cls", [SlackNotifier, ChatNotifier])
def test_webhook_posts_the_notice_as_json_text(receiver, release, cls):
    notice = Notify(release.release_id, NoticeKind.APPROVAL_NEEDED, "approval", "waits for approval")
    cls(receiver.url(), dashboard_url="http://127.0.0.1:8090").notify(release, notice)
    (body,) = receiver.bodies
    assert set(body) == {"text"}
    assert body["text"].startswith(f"*Release {release.release_id} needs approval ({release.tag})*")
    assert "Stage:   approval" in body["text"] and "presses Approve or Reject" in body["text"]
    assert f"http://127.0.0.1:8090/release/{release.release_id}" in body["text"]
    assert receiver.paths == ["/services/T000/B000/s3cretTOKEN"]


def test_webhook_retries_once_after_a_server_error(receiver, release):
    receiver.statuses = [503]
    SlackNotifier(receiver.url()).notify(release, failed_notice(release))
    assert len(receiver.bodies) == 2


def test_webhook_gives_up_after_the_retry_without_showing_the_url(receiver, release):
    receiver.statuses = [500, 502]
    with pytest.raises(NotifyError) as caught:
        ChatNotifier(receiver.url()).notify(release, failed_notice(release))
    assert str(caught.value) == "google-chat webhook did not accept the message: HTTP 502"
    assert len(receiver.bodies) == 2


def test_webhook_client_error_is_not_retried(receiver, release):
    receiver.statuses = [404]
    with pytest.raises(NotifyError, match="HTTP 404"):
        SlackNotifier(receiver.url()).notify(release, failed_notice(release))
    assert len(receiver.bodies) == 1


def test_unreachable_webhook_error_hides_the_url(release):
    url = f"http://127.0.0.1:{free_port()}/services/T000/B000/s3cretTOKEN"
    with pytest.raises(NotifyError) as caught:
        SlackNotifier(url).notify(release, failed_notice(release))
    assert "s3cretTOKEN" not in str(caught.value) and "ConnectionError" in str(caught.value)
    assert "s3cretTOKEN" not in repr(SlackNotifier(url))


def test_one_failing_channel_does_not_stop_the_others(smtp, receiver, release, caplog):
    port, inbox = smtp
    broken = Receiver()
    broken.statuses = [500, 500]
    dead_port = free_port()
    try:
        multi = MultiNotifier([
            SlackNotifier(broken.url("hooks/BROKEN-s3cret")),
            EmailNotifier("127.0.0.1", dead_port, "bot@localhost", ["ops@example.com"], timeout_s=2),
            ChatNotifier(receiver.url()),
            EmailNotifier("127.0.0.1", port, "bot@localhost", ["ops@example.com"]),
        ])
        with caplog.at_level(logging.WARNING):
            delivered = multi.notify(release, failed_notice(release))
    finally:
        broken.close()
    assert delivered == 2
    assert len(receiver.bodies) == 1 and len(inbox.messages) == 1
    logged = caplog.text
    assert "notify slack" in logged and "notify email" in logged
    assert "s3cret" not in logged and "BROKEN" not in logged


def test_build_notifier_uses_every_configured_channel(smtp, receiver, release):
    port, inbox = smtp
    settings = Settings(smtp_host="127.0.0.1", smtp_port=port, slack_webhook_url=receiver.url("slack"),
                        chat_webhook_url=receiver.url("chat"))
    notifier = build_notifier(settings, recipients=["ops@example.com"])
    assert [c.name for c in notifier.channels] == ["email", "slack", "google-chat"]
    notice = Notify(release.release_id, NoticeKind.RELEASE_FINISHED, "", "done")
    assert notifier.notify(release, notice) == 3
    assert sorted(receiver.paths) == ["/chat", "/slack"] and len(inbox.messages) == 1
    assert [c.name for c in build_notifier(Settings()).channels] == []
