"""The sweeper's query on the Firestore emulator: only due releases, earliest first, every page;
expiry written as a timestamp, the type a TTL policy reads; a stall announced once per stall."""
from __future__ import annotations

from datetime import datetime

import pytest
from google.cloud import firestore

from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
from shared.adapters.firestore_store import FirestoreStore
from shared.domain.dead_letters import DeadLetter
from shared.app.config import Settings
from shared.domain.pipeline import load_pipeline
from shared.app.sweeper import sweep
from shared.domain.commands import NoticeKind
from shared.domain.pipeline import StageKind
from shared.domain.stall import ANNOUNCE_AFTER_S
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.domain.wake import SAFETY_NET_S, next_wake
from shared.domain.wire import from_payload
from shared.testing.fakes import FakeClock, FakeExecutor, FakeNotifier, FakePublisher
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
    letters = FirestoreDeadLetters(store.client, store.settings)
    assert letters.record(DeadLetter("bad-1", "not JSON", "dispatch", NOW, b"{"))
    store.claim_delivery("delivery-1", {"repo": "acme/app"})
    for collection, doc in ((letters.collection, "bad-1"), (store.deliveries, "delivery-1")):
        assert isinstance(collection.document(doc).get().get("expire_at"), datetime)
    assert letters.collection.document("bad-1").get().get("expire_at").timestamp() == NOW + 30 * 24 * 3600


def _running_since(store, n: int, since: float):
    """A release whose first stage has been running since ``since``, as the gate leaves it."""
    pipeline = load_pipeline(store.settings.pipeline_file)
    state = new_release(pipeline, repo="acme/app", ref="refs/heads/main", commit=(f"{n:02x}" * 20), version="1.0.0",
                        pushed_by="dev@example.com", now=since)
    first = pipeline.stages[0]
    st = state.stages[first.id]
    st.status, st.attempt, st.stage_run_id = StageStatus.RUNNING, 1, f"{state.release_id}.{first.id}.a1"
    st.started_at, st.deadline = since, since + first.timeout_s
    state.updated_at = since
    state.wake_at = next_wake(state, since)
    assert store.create(state)
    return state, first


def test_a_stalled_release_gets_one_notice_over_several_sweeps_and_another_after_it_moved(store):
    state, first = _running_since(store, 40, NOW)
    clock, publisher, notifier = FakeClock(NOW + first.timeout_s + 30), FakePublisher(), FakeNotifier()
    executors = {kind.value: FakeExecutor() for kind in StageKind}  # polls find nothing: the stage is stuck

    def sweeps(n):
        for _ in range(n):
            sweep(store, executors, publisher, clock, store.settings, notifier=notifier)
            clock.advance(60)

    sweeps(2)  # stalled, but within the grace the sweeper's own deadline tick has
    assert notifier.notices == []
    clock.advance(ANNOUNCE_AFTER_S)
    sweeps(4)
    (notice,) = notifier.notices
    assert (notice.kind, notice.release_id, notice.stage) == (NoticeKind.STALLED, state.release_id, first.id)
    updates = [from_payload("n", data) for topic, data, _ in publisher.messages if topic == store.settings.updates_topic]
    assert [(u.kind, u.release_id) for u in updates] == [(NoticeKind.STALLED, state.release_id)]
    stored, token = store.get(state.release_id)
    assert stored.updated_at == NOW  # the marker left what the stall is measured from alone
    assert stored.stall_announced_for and stored.stall_announced_for.startswith(f"{first.id}/")
    assert stored.wake_at is not None and stored.wake_at <= clock.now() + SAFETY_NET_S  # still swept

    # The release moves (a replay runs the stage again), then stalls anew: a second notice.
    st = stored.stages[first.id]
    st.attempt, st.stage_run_id = 2, f"{state.release_id}.{first.id}.a2"
    st.started_at = stored.updated_at = clock.now()
    st.deadline = clock.now() + first.timeout_s
    stored.wake_at = next_wake(stored, clock.now())
    store.update(stored, token)
    sweeps(2)
    assert len(notifier.notices) == 1  # it moved just now
    clock.advance(first.timeout_s + ANNOUNCE_AFTER_S)
    sweeps(3)
    assert [n.kind for n in notifier.notices] == [NoticeKind.STALLED] * 2


def test_a_release_that_moved_just_before_the_sweep_is_not_announced(store):
    state, first = _running_since(store, 41, NOW)
    late = NOW + first.timeout_s + ANNOUNCE_AFTER_S + 60
    fresh, fresh_token = store.get(state.release_id)
    fresh.updated_at = late - 1  # the gate moved it a second ago (its wake_at is still due)
    store.update(fresh, fresh_token)
    notifier = FakeNotifier()
    sweep(store, {kind.value: FakeExecutor() for kind in StageKind}, FakePublisher(), FakeClock(late), store.settings,
          notifier=notifier)
    assert notifier.notices == [] and store.get(state.release_id)[0].stall_announced_for == ""
