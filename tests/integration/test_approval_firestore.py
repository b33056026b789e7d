"""The approval store and service over the Firestore emulator, and the link by real mail."""
from __future__ import annotations

import threading
import urllib.parse

import pytest

from shared.app.approvals import ApprovalService
from shared.adapters.firestore_approvals import FirestoreApprovalStore
from shared.domain.approval_record import ApprovalNotFound, ApprovalRecord
from shared.app.config import Settings
from shared.adapters.notify import EmailNotifier
from tests.integration.test_notify_channels import smtp  # noqa: F401 - fixture
from shared.adapters.notify import link_senders_from_settings
from tests.unit.test_approval_service import APPROVER, KEYS, REFUSALS, T0, World, token_in


@pytest.fixture
def settings(unique_prefix):
    return Settings(collection_prefix=unique_prefix, approval_keys=KEYS, approval_base_url="http://127.0.0.1:8083")


@pytest.fixture
def store(firestore_client, settings):
    return FirestoreApprovalStore(firestore_client, settings)


@pytest.fixture
def world(store, settings):
    return World(store=store, settings=settings)


def record(nonce="nonce-0123456789abcdefgh", **changes):
    data = dict(nonce=nonce, release_id="acme-app-abcdef123456", stage="approval", attempt=1,
                approver=APPROVER, expires_at=T0 + 3600, tag="v1.2.3-abcdef1", created_at=T0)
    return ApprovalRecord(**{**data, **changes})


def documents(firestore_client, settings):
    return {d.id: d.to_dict() for d in firestore_client.collection(settings.collection("approvals")).stream()}


def test_store_contract(store, firestore_client, settings):
    assert store.create(record())
    assert not store.create(record(approver="other@example.com"))  # create-only
    assert store.get("nonce-0123456789abcdefgh") == record()
    assert store.get("nonce-missing-0000000000") is None
    assert store.find_open("acme-app-abcdef123456", "approval", 1, APPROVER) == record()
    assert store.find_open("acme-app-abcdef123456", "approval", 2, APPROVER) is None
    assert store.consume(record().nonce, "rejected", "too risky", "UA/1", T0 + 5)
    assert not store.consume(record().nonce, "approved", "", "UA/2", T0 + 6)
    stored = documents(firestore_client, settings)[record().nonce]
    assert (stored["decision"], stored["reason"], stored["user_agent"], stored["consumed_at"]) == (
        "rejected", "too risky", "UA/1", T0 + 5)
    # a timestamp (the type a TTL policy reads), 30 days past the link's own expiry
    assert stored["expire_at"].timestamp() == T0 + 3600 + 30 * 24 * 3600
    assert store.find_open("acme-app-abcdef123456", "approval", 1, APPROVER) is None
    store.mark_published(record().nonce, "m-1")
    assert store.get(record().nonce).message_id == "m-1"
    with pytest.raises(ApprovalNotFound):
        store.consume("nonce-missing-0000000000", "approved", "", "", T0)


def test_ten_concurrent_consumes_one_wins(store, firestore_client, settings):
    assert store.create(record())
    barrier = threading.Barrier(10)
    results = []

    def consume(i):
        barrier.wait()
        results.append((store.consume(record().nonce, "approved", f"thread {i}", f"UA/{i}", T0 + i), i))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for ok, i in results if ok]
    assert len(results) == 10 and len(winners) == 1
    stored = documents(firestore_client, settings)[record().nonce]
    assert stored["reason"] == f"thread {winners[0]}" and stored["user_agent"] == f"UA/{winners[0]}"


def test_get_changes_nothing_and_post_publishes(world, firestore_client, settings):
    token = world.send_links()[APPROVER]
    nonce = world.nonce(token)
    ref = firestore_client.collection(settings.collection("approvals")).document(nonce)
    before = ref.get()
    snapshot = world.release.to_dict()
    for method in ("GET", "HEAD", "GET"):
        assert world.get(token, method).status == 200
    after = ref.get()
    assert after.update_time == before.update_time and after.to_dict() == before.to_dict()
    assert world.release.to_dict() == snapshot and world.publisher.messages == []

    world.clock.t = T0 + 60
    status, _, _ = world.post(token, "approve", "ship it")
    assert status == 200
    ((topic, data, _),) = world.publisher.messages
    assert topic == "pipeline-events" and data["nonce"] == nonce and data["approve"] is True
    stored = ref.get().to_dict()
    assert (stored["decision"], stored["reason"], stored["consumed_at"], stored["message_id"]) == (
        "approved", "ship it", T0 + 60, "msg-1")
    assert world.post(token).status == 409 and len(world.publisher.messages) == 1


def test_ten_concurrent_posts_publish_once(world):
    token = world.send_links()[APPROVER]
    barrier = threading.Barrier(10)
    statuses = []

    def click():
        barrier.wait()
        statuses.append(world.post(token).status)

    threads = [threading.Thread(target=click) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 9
    assert len(world.publisher.messages) == 1


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_consume_and_publish_nothing(world, firestore_client, settings, name):
    make, status, words = REFUSALS[name]
    answer = world.post(make(world))
    assert answer.status == status and words in answer.html
    assert world.publisher.messages == []
    assert all(doc.get("consumed_at") is None for doc in documents(firestore_client, settings).values())


def test_link_arrives_by_mail_and_opens_the_confirm_page(store, settings, smtp):  # noqa: F811
    port, inbox = smtp
    mail_settings = Settings(**{**settings.__dict__, "smtp_host": "127.0.0.1", "smtp_port": port})
    world = World(store=store, settings=mail_settings)
    # The production wiring (shared/bootstrap.py): links go by mail because RELEASE_SMTP_HOST is set.
    world.service = ApprovalService.from_settings(mail_settings, store=store, publisher=world.publisher,
                                                  clock=world.clock, releases=world.releases,
                                                  link_senders=link_senders_from_settings(mail_settings))
    assert [type(s) for s in world.service.link_senders] == [EmailNotifier]
    assert world.service.request(world.release, world.command) == {"links_sent": 1}
    (message,) = inbox.messages
    assert message["To"] == APPROVER
    token = token_in(message.get_content())
    link = urllib.parse.urlparse(f"http://x/?token={urllib.parse.quote(token)}")
    query = dict(urllib.parse.parse_qsl(link.query))
    status, html, _ = world.pages.handle("GET", query, {}, {})
    assert status == 200 and world.release.release_id in html
    assert not store.get(world.nonce(token)).consumed
