"""The release store writes only the fields that changed since the version it last read or wrote
(shared/adapters/firestore_store.py ``changed_fields``). Run on the Firestore emulator: what is
checked is what Firestore makes of those field paths, deletes and quoted keys, read back."""
from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.adapters.firestore_store import FirestoreStore, _document, changed_fields, field_paths
from shared.app.config import Settings
from shared.domain.errors import StaleWrite
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from tests.conftest import PROJECT
from tests.unit.gate_helpers import PIPELINE, PUSHER, T0

pytestmark = pytest.mark.emulators

# Field names as Firestore allows them (non-empty, not __x__), with the characters FieldPath
# must quote: dots, dashes, backticks, spaces, non-ASCII.
KEYS = st.text(alphabet="ab.-`é _1", min_size=1, max_size=4).filter(lambda k: not re.fullmatch(r"__.*__", k))
SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5)
# Firestore arrays hold scalars and maps, not arrays.
VALUES = st.recursive(SCALARS | st.lists(SCALARS, max_size=3),
                      lambda inner: st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=5)


def strictly_equal(a: Any, b: Any) -> bool:
    """Equal with the same type at every level (1 and 1.0, True and 1 differ in Firestore)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def collection(emulators, firestore_client, unique_prefix):
    return firestore_client.collection(f"{unique_prefix}docs")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=DOCUMENTS, new=DOCUMENTS)
@example(old={"a": {"n": 1, "t": True, "m": "x"}}, new={"a": {"n": 1.0, "t": 1, "m": "y"}})  # equal in Python only
@example(old={"a": {"b": {"c": 1, "d": 2}}, "z": 1}, new={"a": {"b": {"c": 1}}})  # a nested key goes, z stays
def test_the_changed_fields_turn_any_document_into_the_next_as_a_whole_update_would(firestore_client, collection,
                                                                                    old, new):
    doc = collection.document()
    written = doc.set(old)
    changes = changed_fields(old, new)
    if changes:
        doc.update(field_paths(changes), option=firestore_client.write_option(last_update_time=written.update_time))
    # A whole-document update replaces each top-level field of ``new`` and leaves the others.
    expected = {**old, **new}
    got = doc.get().to_dict()
    assert strictly_equal(got, expected), (changes, got, expected)


def release(commit: str):
    return new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit=commit, version="1.2.3",
                       pushed_by=PUSHER, now=T0)


@pytest.fixture
def store_settings(emulators, unique_prefix):
    return Settings(project=PROJECT, collection_prefix=unique_prefix)


def stored(client, settings_, release_id: str) -> dict:
    return client.collection(settings_.collection("releases")).document(release_id).get().to_dict()


def test_a_release_moved_through_the_store_reads_back_as_each_state_written(firestore_client, store_settings):
    store = FirestoreStore(firestore_client, store_settings)
    state = release("e" * 40)
    store.create(state)
    steps = [
        lambda s: s.stages["lint"].__setattr__("status", StageStatus.RUNNING),
        lambda s: s.stages["lint"].result.update({"build_id": "b-1", "log.url": "http://x/1", "n": 1}),
        lambda s: s.outbox.append({"event_id": "e1", "commands": [{"type": "start"}], "lease_until": T0 + 30}),
        # int -> float is a change to Firestore though equal in Python, beside one that is not
        lambda s: (s.stages["lint"].result.update({"n": 1.0}), setattr(s, "reason", "float")),
        lambda s: s.stages["lint"].result.pop("log.url"),  # a nested key removed
        lambda s: s.outbox.clear(),
        lambda s: setattr(s, "status", ReleaseStatus.AWAITING_APPROVAL),
    ]
    for step in steps:
        state, token = store.get(state.release_id)
        step(state)
        store.update(state, token)
        assert strictly_equal(stored(firestore_client, store_settings, state.release_id), _document(state))
        assert store.get(state.release_id)[0].to_dict() == state.to_dict()


def test_a_diff_is_never_written_over_a_version_another_writer_made(firestore_client, store_settings):
    ours, theirs = FirestoreStore(firestore_client, store_settings), FirestoreStore(firestore_client, store_settings)
    state = release("f" * 40)
    ours.create(state)
    mine, token = ours.get(state.release_id)
    other, other_token = theirs.get(state.release_id)
    other.stages["lint"].result["by"] = "them"
    theirs.update(other, other_token)
    mine.status = ReleaseStatus.CANCELLED
    with pytest.raises(StaleWrite):
        ours.update(mine, token)
    # Read again, the next write carries both: theirs kept, ours added.
    mine, token = ours.get(state.release_id)
    mine.status = ReleaseStatus.CANCELLED
    ours.update(mine, token)
    got = stored(firestore_client, store_settings, state.release_id)
    assert got["status"] == "cancelled" and got["stages"]["lint"]["result"] == {"by": "them"}


def test_after_a_field_update_the_next_write_is_whole_and_right(firestore_client, store_settings):
    store = FirestoreStore(firestore_client, store_settings)
    state = release("0" * 40)
    store.create(state)
    state, token = store.get(state.release_id)
    token = store.update_fields(state.release_id, {("stages", "lint", "result"): {"k": 1}}, token)
    state.stages["lint"].result = {"k": 2}
    store.update(state, token)
    assert stored(firestore_client, store_settings, state.release_id)["stages"]["lint"]["result"] == {"k": 2}
