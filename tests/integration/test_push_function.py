"""The `on_push` Cloud Function through functions-framework, against the emulators."""
from __future__ import annotations

import json

import pytest

from shared import bootstrap
from tests.integration.http_function import http_function_with_events
from shared.app.locks import EnvironmentLocks
from shared.app.push import signature_for

pytestmark = pytest.mark.emulators
SECRET = "test-webhook-secret"


@pytest.fixture
def app(emulators, unique_prefix, monkeypatch):
    monkeypatch.setenv("RELEASE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("RELEASE_COLLECTION_PREFIX", unique_prefix)
    monkeypatch.setenv("RELEASE_EVENTS_TOPIC", f"{unique_prefix}events")
    monkeypatch.setenv("RELEASE_PROJECT", emulators["project"])
    client = http_function_with_events("on_push", emulators["project"], unique_prefix)
    yield client
    bootstrap.reset()


def push_body(commit="b" * 40, version="1.4.0", ref="refs/heads/main", repo="acme/noesis2"):
    return json.dumps({
        "ref": ref, "after": commit, "repository": {"full_name": repo},
        "pusher": {"name": "dev", "email": "dev@example.com"},
        "head_commit": {"message": f"Change\n\nRelease-Version: {version}"},
    }).encode()


def post(client, body, event="push", delivery="d-1", signature=None):
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json"}
    if signature is not False:
        headers["X-Hub-Signature-256"] = signature or signature_for(SECRET, body)
    return client.post("/", data=body, headers=headers)


def stored_releases():
    return bootstrap.store().list_releases()


def test_signed_push_creates_a_release_and_publishes_started(app):
    response = post(app, push_body())
    assert response.status_code == 201
    body = response.get_json()
    assert body["tag"] == "v1.4.0-bbbbbbb" and body["status"] == "created"
    assert [r.release_id for r in stored_releases()] == [body["release_id"]]
    assert app.pull() == [{"type": "release.started", "release_id": body["release_id"]}]


def test_second_push_for_the_same_commit_creates_nothing_new(app):
    first = post(app, push_body(), delivery="d-1").get_json()
    app.pull()
    again = post(app, push_body(), delivery="d-2")
    redelivery = post(app, push_body(), delivery="d-1")
    assert again.status_code == 200 and again.get_json()["status"] == "exists"
    assert redelivery.status_code == 200
    assert [r.release_id for r in stored_releases()] == [first["release_id"]]


@pytest.mark.parametrize("signature", [False, "sha256=" + "0" * 64, "garbage"])
def test_unsigned_or_wrongly_signed_push_is_401_and_stores_nothing(app, signature):
    response = post(app, push_body(), signature=signature)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.get_json()["error"]
    assert stored_releases() == [] and app.pull() == []


def test_malformed_json_is_400(app):
    response = post(app, b"{not json")
    assert response.status_code == 400 and "not JSON" in response.get_json()["error"]
    assert stored_releases() == []


def test_push_without_semver_is_422_naming_what_is_missing(app):
    body = json.dumps({"ref": "refs/heads/main", "after": "c" * 40, "repository": {"full_name": "acme/noesis2"},
                       "head_commit": {"message": "no version here"}}).encode()
    response = post(app, body)
    assert response.status_code == 422
    assert "Release-Version: X.Y.Z" in response.get_json()["error"]
    assert stored_releases() == []


def test_ping_is_200_and_other_events_are_acknowledged(app):
    assert post(app, b'{"zen": "hi"}', event="ping").status_code == 200
    response = post(app, b'{"action": "opened"}', event="pull_request")
    assert response.status_code == 202 and response.get_json()["status"] == "ignored"
    assert stored_releases() == []


def test_push_to_another_branch_is_ignored(app):
    response = post(app, push_body(ref="refs/heads/feature"))
    assert response.status_code == 202 and stored_releases() == []


def test_version_not_higher_than_the_last_released_is_409_naming_both(app):
    first = post(app, push_body(commit="d" * 40, version="1.4.0")).get_json()
    state, _ = bootstrap.store().get(first["release_id"])
    # It passes its approval and takes the prod lock: the floor of apps/{app} becomes 1.4.0.
    locks = EnvironmentLocks(bootstrap.app_records(), bootstrap.publisher(), bootstrap.settings(),
                             bootstrap.service_lock_records())
    assert locks.acquire(state.pipeline_name, "prod", state.release_id, state.created_at, "1.4.0") == "granted"
    for version in ("1.4.0", "1.3.9"):
        response = post(app, push_body(commit="e" * 40, version=version), delivery=f"d-{version}")
        assert response.status_code == 409
        error = response.get_json()["error"]
        assert f"version {version} of eeeeeee is not higher than the last released version 1.4.0" in error
        assert first["release_id"] in error
    assert [r.release_id for r in stored_releases()] == [first["release_id"]]
    assert post(app, push_body(commit="e" * 40, version="1.5.0"), delivery="d-ok").status_code == 201


def test_a_push_from_a_repository_no_pipeline_lists_is_refused_and_starts_nothing(app):
    response = post(app, push_body(repo="acme/unmapped"))
    assert response.status_code == 422
    assert "repository acme/unmapped releases no pipeline" in response.get_json()["error"]
    assert stored_releases() == [] and app.pull() == []


def test_each_repository_releases_the_pipeline_that_lists_it(app, monkeypatch, tmp_path):
    """Two pipeline files: a push of each repository starts a release of its own application."""
    from shared.app.config import REPO_ROOT

    sample = (REPO_ROOT / "pipelines" / "sample.yaml").read_text()
    other = tmp_path / "shop.yaml"
    other.write_text(sample.replace("name: sample-app", "name: shop").replace(
        "repositories: [example/sample-app]", "repositories: [Acme/Shop]"))
    monkeypatch.setenv("RELEASE_PIPELINE_FILES", str(other))
    bootstrap.reset()
    shop = post(app, push_body(repo="acme/shop", commit="c" * 40), delivery="d-shop")
    noesis2 = post(app, push_body(repo="acme/noesis2", commit="d" * 40), delivery="d-noesis2")
    assert (shop.status_code, noesis2.status_code) == (201, 201)
    names = {r.repo: r.pipeline_name for r in stored_releases()}
    assert names == {"acme/shop": "shop", "acme/noesis2": "noesis2"}


def test_a_repository_listed_by_two_pipeline_files_is_a_setting_to_fix(app, monkeypatch, tmp_path):
    from shared.app.config import REPO_ROOT

    twin = tmp_path / "twin.yaml"
    twin.write_text((REPO_ROOT / "pipelines" / "noesis2.yaml").read_text().replace("name: noesis2", "name: twin"))
    monkeypatch.setenv("RELEASE_PIPELINE_FILES", str(twin))
    bootstrap.reset()
    from shared.domain.errors import ConfigError

    with pytest.raises(ConfigError, match="acme/noesis2 is listed by two pipelines"):
        bootstrap.push_service()
