"""The sweeper's query on the Firestore emulator: only due releases, earliest first, every page;
expiry written as a timestamp, the type a TTL policy reads."""
from __future__ import annotations

from datetime import datetime

import pytest
from google.cloud import firestore

from shared.adapters.firestore_store import FirestoreStore
from shared.app.config import Settings
from shared.domain.pipeline import load_pipeline
from shared.domain.state import ReleaseStatus, new_release
from tests.conftest import PROJECT

pytestmark = pytest.mark.emulators
NOW = 1_900_000_000.0


@pytest.fixture
def store(emulators, unique_prefix):
    settings = Settings(project=PROJECT, collection_prefix=unique_prefix)
    store = FirestoreStore(firestore.Client(project=PROJECT), settings)
    store.save_pipeline(load_pipeline(settings.pipeline_file))
    return store


def release(store, n: int, wake_at, status=ReleaseStatus.RUNNING, expire_at=None):
    pipeline = load_pipeline(store.settings.pipeline_file)
    state = new_release(pipeline, repo="acme/app", ref="refs/heads/main", commit=(f"{n:02x}" * 20), version="1.0.0",
                        pushed_by="dev@example.com", now=NOW - 1000)
    state.wake_at, state.status, state.expire_at = wake_at, status, expire_at
    assert store.create(state)
    return state.release_id


def test_only_due_releases_come_back_earliest_first_page_after_page(store):
    due = [release(store, n, NOW - 10 * n) for n in range(1, 6)]
    release(store, 10, NOW + 5)  # not yet
    release(store, 11, None, ReleaseStatus.SUCCEEDED, expire_at=NOW + 3600)  # never
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.list_due(NOW, 2, cursor)
        pages += 1
        seen += [state.release_id for state, _ in page]
        if cursor is None:
            break
    assert seen == list(reversed(due)) and pages == 3


def test_wake_at_moves_only_on_the_version_read(store):
    rid = release(store, 1, NOW - 1)
    [(state, token)], _ = store.list_due(NOW, 10)
    store.update_fields(rid, {("wake_at",): NOW + 90}, token)
    assert store.list_due(NOW, 10)[0] == []
    from shared.domain.errors import StaleWrite

    with pytest.raises(StaleWrite):
        store.update_fields(rid, {("wake_at",): NOW - 5}, token)  # a sweep that read before a move


def test_expiry_is_stored_as_a_timestamp_and_read_back_as_epoch_seconds(store):
    rid = release(store, 2, None, ReleaseStatus.SUCCEEDED, expire_at=NOW + 3600)
    raw = store.releases.document(rid).get().to_dict()
    assert isinstance(raw["expire_at"], datetime) and raw["expire_at"].timestamp() == NOW + 3600
    assert store.get(rid)[0].expire_at == NOW + 3600
    store.claim_delivery("delivery-1", {"repo": "acme/app"})
    # Dead letters moved to their own store (shared/adapters/firestore_dead_letters.py) in main.
    assert isinstance(store.deliveries.document("delivery-1").get().get("expire_at"), datetime)
