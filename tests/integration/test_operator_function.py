"""The operator function through functions-framework: Google ID tokens checked offline.

The token issuer is local (local/token_issuer.py): it signs with its own key and serves
its certificate over loopback HTTP in Google's format, and the function verifies with
the same google-auth call it makes on GCP, pointed at that certificate URL.
"""
from __future__ import annotations

import json

import pytest
from google.auth import crypt

from local.token_issuer import LocalTokenIssuer, _key_and_certificate
from shared import bootstrap
from tests.integration.http_function import http_function_with_events
from shared.domain.state import new_release
from tests.unit.gate_helpers import PIPELINE, PUSHER

pytestmark = pytest.mark.emulators
AUDIENCE = "https://operator.example.test"
OPERATOR = "ops@example.com"


@pytest.fixture(scope="module")
def issuer():
    started = LocalTokenIssuer().start()
    yield started
    started.stop()


@pytest.fixture
def app(emulators, unique_prefix, monkeypatch, issuer):
    env = {"RELEASE_COLLECTION_PREFIX": unique_prefix, "RELEASE_EVENTS_TOPIC": f"{unique_prefix}events",
           "RELEASE_PROJECT": emulators["project"], "RELEASE_OPERATOR_AUDIENCE": AUDIENCE,
           "RELEASE_OPERATOR_CERTS_URL": issuer.certs_url, "RELEASE_OPERATOR_ISSUERS": issuer.issuer,
           "RELEASE_OPERATORS": f"{OPERATOR},QA@Example.com", "RELEASE_PEOPLE": "octo-ops=ops@example.com"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = http_function_with_events("operator", emulators["project"], unique_prefix)
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by=PUSHER, now=1_800_000_000.0)
    bootstrap.store().save_pipeline(PIPELINE)
    bootstrap.store().create(state)
    client.release_id = state.release_id
    yield client
    bootstrap.reset()


def call(client, token, action="replay", **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"action": action, "params": params}
    return client.post("/", data=json.dumps(body), headers=headers, content_type="application/json")


def test_an_operator_with_a_valid_token_replays_and_the_request_is_recorded(app, issuer):
    response = call(app, issuer.mint("Ops@Example.COM", AUDIENCE), release_id=app.release_id, stage="unit",
                    reason="flaky")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["requested_by"] == OPERATOR
    [event] = app.pull()
    assert event == {"type": "stage.replay", "release_id": app.release_id, "stage": "unit",
                     "replay_id": body["request_id"], "requested_by": OPERATOR, "reason": "flaky"}
    record = bootstrap.operator_requests().get(body["request_id"])
    assert (record["action"], record["requested_by"], record["release_id"], record["stage"]) == (
        "replay", OPERATOR, app.release_id, "unit")


def test_chaos_carries_the_request_id_the_dispatcher_checks(app, issuer):
    body = call(app, issuer.mint("qa@example.com", AUDIENCE), "chaos", release_id=app.release_id).get_json()
    assert app.pull() == [{"type": "chaos.requested", "release_id": app.release_id,
                           "requested_by": "qa@example.com", "request_id": body["request_id"]}]


def forged_tokens(issuer):
    other_key, _ = _key_and_certificate("attacker")
    same_kid_other_key = crypt.RSASigner.from_string(other_key, key_id=issuer.key_id)
    return {
        "signed by another key under the issuer's key id": issuer.mint(OPERATOR, AUDIENCE, signer=same_kid_other_key),
        "for another audience": issuer.mint(OPERATOR, "https://elsewhere.example.test"),
        "expired an hour ago": issuer.mint(OPERATOR, AUDIENCE, issued_at=0, lifetime_s=60),
        "from an untrusted issuer": issuer.mint(OPERATOR, AUDIENCE, issuer="https://evil.example.test"),
        "not a JWT": "not-a-token",
    }


@pytest.mark.parametrize("kind", ["signed by another key under the issuer's key id", "for another audience",
                                  "expired an hour ago", "from an untrusted issuer", "not a JWT"])
def test_a_token_that_does_not_verify_is_401_and_publishes_nothing(app, issuer, kind):
    response = call(app, forged_tokens(issuer)[kind], release_id=app.release_id, stage="unit", reason="x")
    assert response.status_code == 401 and "ID token refused" in response.get_json()["error"]
    assert app.pull() == []


def test_no_token_unverified_address_or_someone_not_on_the_list_is_refused(app, issuer):
    params = {"release_id": app.release_id, "stage": "unit", "reason": "x"}
    assert call(app, "", **params).status_code == 401
    assert call(app, issuer.mint(OPERATOR, AUDIENCE, verified=False), **params).status_code == 403
    stranger = call(app, issuer.mint("dev@example.com", AUDIENCE), **params)
    assert stranger.status_code == 403 and "not an operator" in stranger.get_json()["error"]
    assert app.pull() == []


def test_bad_requests_are_answered_with_what_is_wrong(app, issuer):
    token = issuer.mint(OPERATOR, AUDIENCE)
    assert call(app, token, "launch", release_id=app.release_id).status_code == 400
    assert call(app, token, release_id="a/b", stage="unit", reason="x").status_code == 400
    assert call(app, token, release_id="no-such-release", stage="unit", reason="x").status_code == 404
    assert call(app, token, release_id=app.release_id, stage="nope", reason="x").status_code == 404
    assert call(app, token, release_id=app.release_id, stage="unit").status_code == 400
    assert app.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 405
    assert app.pull() == []


def test_a_request_id_cannot_be_reused_for_another_request(app, issuer):
    token = issuer.mint(OPERATOR, AUDIENCE)
    body = {"action": "replay", "request_id": "fixed-1",
            "params": {"release_id": app.release_id, "stage": "unit", "reason": "x"}}
    headers = {"Authorization": f"Bearer {token}"}
    assert app.post("/", data=json.dumps(body), headers=headers).status_code == 200
    assert app.post("/", data=json.dumps(body), headers=headers).status_code == 200  # the same again: idempotent
    body["params"]["stage"] = "lint"
    assert app.post("/", data=json.dumps(body), headers=headers).status_code == 409
