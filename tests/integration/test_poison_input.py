"""Poison input through the deployed entry points, over the Firestore emulator.

Why (issue 11): a tick whose release_id is ``a/b``, ``..`` or ``__x__``, a Cloud Build
notification whose data is a JSON array or whose ``results`` is a list, a message with
non-map attributes answered 500 on every delivery (20 failures in 20 s); the dashboard
answered 503 "store unavailable" for such ids. Now each is acknowledged and dead-lettered
once with its reason, and the dashboard answers 404.
"""
from __future__ import annotations

import base64
import json

import pytest
from functions_framework import create_app

from shared import bootstrap

pytestmark = pytest.mark.emulators


@pytest.fixture
def dispatch(emulators, unique_prefix, monkeypatch):
    monkeypatch.setenv("RELEASE_APPROVAL_KEYS", "k1:test-link-signing-key-0123456789")
    monkeypatch.setenv("RELEASE_COLLECTION_PREFIX", unique_prefix)
    monkeypatch.setenv("RELEASE_PROJECT", emulators["project"])
    bootstrap.reset()
    yield create_app("dispatch", "functions/main.py", "cloudevent").test_client()
    bootstrap.reset()


@pytest.fixture
def dashboard(emulators, unique_prefix, monkeypatch):
    monkeypatch.setenv("RELEASE_COLLECTION_PREFIX", unique_prefix)
    monkeypatch.setenv("RELEASE_PROJECT", emulators["project"])
    bootstrap.reset()
    yield create_app("dashboard", "functions/main.py").test_client()
    bootstrap.reset()


def deliver(client, event_id, data, attributes):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    envelope = {"message": {"data": base64.b64encode(raw).decode(), "attributes": attributes,
                            "messageId": event_id}, "subscription": "projects/p/subscriptions/s"}
    headers = {"ce-id": event_id, "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "ce-specversion": "1.0",
               "Content-Type": "application/json"}
    return client.post("/", data=json.dumps(envelope), headers=headers)


POISON = {
    "tick-slash": ({"type": "release.tick", "release_id": "a/b"}, {"type": "release.tick"}, "cannot be a release id"),
    "tick-dotdot": ({"type": "release.tick", "release_id": ".."}, {"type": "release.tick"}, "cannot be a release id"),
    "tick-reserved": ({"type": "release.tick", "release_id": "__x__"}, {}, "cannot be a release id"),
    "build-array": ([{"id": "b1"}], {"buildId": "b1", "status": "SUCCESS"}, "must be a Build object"),
    "build-results-list": ({"id": "b2", "status": "SUCCESS", "tags": ["run-r1.lint.a1"], "results": []},
                           {"buildId": "b2", "status": "SUCCESS"}, "build.results must be a JSON object"),
    "build-tags-map": ({"id": "b3", "status": "SUCCESS", "tags": {"run": "x"}},
                       {"buildId": "b3", "status": "SUCCESS"}, "build.tags must be a JSON list"),
    "build-foreign-release": ({"id": "b4", "status": "SUCCESS", "tags": ["run-__x__.lint.a1"]},
                              {"buildId": "b4", "status": "SUCCESS"}, "names no possible release"),
    "attributes-not-a-map": ({"type": "release.tick", "release_id": "r1"}, ["not", "a", "map"], "attributes"),
}


@pytest.mark.parametrize("name", list(POISON))
def test_poison_is_acknowledged_and_dead_lettered_once(dispatch, name):
    data, attributes, words = POISON[name]
    for _ in range(3):  # Pub/Sub redelivers whatever is not acknowledged
        answer = deliver(dispatch, f"poison-{name}", data, attributes)
        assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    letters = [letter for letter in bootstrap.dead_letters().list(50) if letter.id == f"poison-{name}"]
    assert len(letters) == 1 and words in letters[0].reason, [(x.id, x.reason) for x in letters]


@pytest.mark.parametrize("path", ["/release/a%2Fb", "/release/..", "/api/release/__x__", "/api/release/a%2F..%2Fb"])
def test_the_dashboard_answers_404_for_ids_that_cannot_exist(dashboard, path):
    answer = dashboard.get(path)
    assert answer.status_code == 404, (answer.status_code, answer.get_data(as_text=True)[:300])
