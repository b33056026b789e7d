"""GitHub reporting through real HTTP: the App adapter against the OpenAPI-validated stand-in
(local/github_api/standin.py), the record in the Firestore emulator."""
from __future__ import annotations

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.github_api.standin import GitHubStandin
from shared.adapters.firestore_github_reports import FirestoreGitHubReports
from shared.adapters.github_app import GitHubApp
from shared.app.config import Settings
from shared.app.github_reporting import GitHubReporting
from shared.domain.errors import GitHubRefused, GitHubRetry
from shared.domain.state import ReleaseStatus
from shared.testing.fakes import FakeClock, FakeStore
from tests.unit.test_github_reports import BUILD, PIPELINE, PROD, STAGING, release

APP_ID = "4242"
REPO = "acme/app"


def pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture
def clock():
    return FakeClock(time.time())


@pytest.fixture
def github(clock):
    standin = GitHubStandin(APP_ID, PUBLIC, {REPO: 77}, clock=clock.now)
    url = standin.start()
    standin.url = url
    yield standin
    standin.stop()


@pytest.fixture
def ledger(firestore_client, unique_prefix):
    return FirestoreGitHubReports(firestore_client, Settings(project="test-project", collection_prefix=unique_prefix))


def reporter(github, ledger, clock, key=KEY):
    app = GitHubApp(APP_ID, pem(key), github.url, clock=clock.now)
    return GitHubReporting(app, ledger, clock, dashboard_url="http://dash.local"), app


def journey():
    """The states a successful release passes through, as the dispatcher writes them."""
    yield release(done=BUILD[:2])
    yield release(done=BUILD, running=STAGING[:1])
    yield release(done=[*BUILD, *STAGING], waiting=True, status=ReleaseStatus.AWAITING_APPROVAL)
    yield release(done=[*BUILD, *STAGING, "approval"], running=PROD[:1])
    yield release(done=[*BUILD, *STAGING, "approval", *PROD], status=ReleaseStatus.SUCCEEDED)


def commit_states(github):
    return [s["state"] for s in github.commit_statuses.get(REPO, [])]


def test_a_successful_release_leaves_two_successful_deployments_with_one_token(github, ledger, clock):
    service, app = reporter(github, ledger, clock)
    for state in journey():
        service.sync(PIPELINE, state)
        service.sync(PIPELINE, state)  # a redelivered event: nothing twice
        clock.advance(30)
    assert github.deployment_states(REPO) == {"staging": ["queued", "in_progress", "success"],
                                              "prod": ["queued", "in_progress", "success"]}
    assert commit_states(github) == ["pending", "pending", "success"]
    assert github.commit_statuses[REPO][-1]["context"] == "release/sample-app"
    assert github.commit_statuses[REPO][-1]["description"] == "v1.4.0-c0ffeec serving 100 % in prod"
    assert github.token_requests == 1 and app.tokens_minted == 1
    prod = github.deployments[REPO][1]
    assert prod["environment"] == "prod" and prod["sha"].startswith("c0ffee") and prod["payload"]["release_id"]
    assert all(m != "POST" or s == 201 for m, _, s in github.requests)


def test_a_bad_canary_ends_prod_in_failure_with_the_reason(github, ledger, clock):
    service, _ = reporter(github, ledger, clock)
    states = list(journey())[:4]
    states.append(release(done=[*BUILD, *STAGING, "approval", *PROD[:2]], status=ReleaseStatus.STOPPED,
                          failed=("prod-smoke", "canary failed: 5xx 5 % vs 0 %")))
    for state in states:
        service.sync(PIPELINE, state)
    assert github.deployment_states(REPO)["prod"] == ["queued", "in_progress", "failure"]
    prod = github.deployments[REPO][1]["statuses"][-1]
    assert prod["description"] == "Smoke prod failed: canary failed: 5xx 5 % vs 0 %"
    assert prod["log_url"].endswith("/release/" + states[0].release_id)
    assert github.commit_statuses[REPO][-1]["state"] == "failure"
    assert "canary failed: 5xx 5 % vs 0 %" in github.commit_statuses[REPO][-1]["description"]


def test_a_cancelled_release_leaves_nothing_in_progress(github, ledger, clock):
    service, _ = reporter(github, ledger, clock)
    service.sync(PIPELINE, release(done=BUILD, running=STAGING[:1]))
    service.sync(PIPELINE, release(done=BUILD, running=STAGING[:1], status=ReleaseStatus.CANCELLED, reason="wrong branch"))
    assert github.deployment_states(REPO) == {"staging": ["queued", "in_progress", "error"]}
    assert commit_states(github)[-1] == "error"


def test_502_then_rate_limits_wait_and_then_arrive_in_order_once_each(github, ledger, clock):
    service, _ = reporter(github, ledger, clock)
    states = list(journey())
    service.sync(PIPELINE, states[0])  # the first commit status and the token, before the faults
    github.fail_next(502)
    service.sync(PIPELINE, states[1])
    record = ledger.get(states[1].release_id)
    assert "502" in record["last_error"] and record["retry_at"] > clock.now()
    clock.advance(3)
    github.fail_next(403)
    assert service.retry_due(FakeStoreWith(states[1])) == 1
    record = ledger.get(states[1].release_id)
    assert "rate limited" in record["last_error"]
    assert record["retry_at"] - clock.now() <= 4  # X-RateLimit-Reset is 1 s ahead; the backoff is 4 s
    for state in states[2:]:
        assert service.sync(PIPELINE, state) == "waiting to retry"  # the release moves on regardless
    assert service.retry_due(FakeStoreWith(states[-1])) == 0  # not yet due
    clock.advance(5)
    assert service.retry_due(FakeStoreWith(states[-1])) == 1
    assert github.deployment_states(REPO) == {"staging": ["queued", "in_progress", "success"],
                                              "prod": ["queued", "in_progress", "success"]}
    assert commit_states(github) == ["pending", "pending", "success"]
    assert ledger.get(states[-1].release_id)["last_error"] == "" and ledger.due(clock.now() + 3600) == []


def test_a_repository_without_the_app_gets_nothing_silently(github, ledger, clock):
    service, _ = reporter(github, ledger, clock)
    state = release(done=BUILD, running=STAGING[:1])
    state.repo = "acme/elsewhere"
    service.sync(PIPELINE, state)
    service.sync(PIPELINE, state)
    assert github.deployments == {} and github.commit_statuses == {}
    assert [p for _, p, _ in github.requests] == ["/repos/acme/elsewhere/installation"]
    assert ledger.get(state.release_id)["not_installed"] is True
    configured = GitHubReporting(GitHubApp(APP_ID, pem(KEY), github.url), ledger, clock, repositories=("acme/other",))
    assert configured.sync(PIPELINE, release()) == "repository not configured for GitHub reporting"


def test_the_app_flow_refuses_a_wrong_key_and_an_exp_too_far_ahead(github, clock):
    wrong = GitHubApp(APP_ID, pem(OTHER_KEY), github.url, clock=clock.now)
    with pytest.raises(GitHubRefused, match="401 A JSON web token could not be decoded"):
        wrong.create_commit_status(REPO, "a" * 40, {"state": "pending"})
    now = int(clock.now())
    far = jwt.encode({"iat": now - 60, "exp": now + 660, "iss": APP_ID}, pem(KEY), algorithm="RS256")
    answer = requests.get(f"{github.url}/repos/{REPO}/installation", headers={"Authorization": f"Bearer {far}"},
                          timeout=5)
    assert answer.status_code == 401 and "too far in the future" in answer.json()["message"]
    right = GitHubApp(APP_ID, pem(KEY), github.url, clock=clock.now)
    claims = jwt.decode(right.app_jwt(), PUBLIC, algorithms=["RS256"])
    assert claims["iat"] == now - 60 and claims["exp"] - now <= 600 and claims["iss"] == APP_ID
    assert github.token_requests == 0


def test_the_standin_refuses_what_the_description_or_the_docs_forbid(github, clock):
    app = GitHubApp(APP_ID, pem(KEY), github.url, clock=clock.now)
    deployment = app.create_deployment(REPO, {"ref": "a" * 40, "environment": "staging", "auto_merge": False,
                                              "required_contexts": []})
    with pytest.raises(GitHubRefused, match="(?s)422 Invalid request.*state: .running. is not one of"):
        app.create_deployment_status(REPO, deployment, {"state": "running"})
    with pytest.raises(GitHubRefused, match="422 .*maximum is 140"):
        app.create_deployment_status(REPO, deployment, {"state": "success", "description": "x" * 141})
    with pytest.raises(GitHubRefused, match="(?s)422 Invalid request.*auto_merge"):
        app.create_deployment(REPO, {"ref": "a" * 40, "auto_merge": "no"})
    with pytest.raises(GitHubRefused, match="404"):
        app.create_deployment_status(REPO, 999999, {"state": "success"})
    app.create_deployment_status(REPO, deployment, {"state": "success", "description": "x" * 140})
    github.fail_next(502)
    with pytest.raises(GitHubRetry):
        app.create_commit_status(REPO, "a" * 40, {"state": "pending"})


class FakeStoreWith(FakeStore):
    """The release store holding one release state (the sweeper's read)."""

    def __init__(self, state):
        super().__init__()
        self.save_pipeline(PIPELINE)
        state.pipeline_digest = PIPELINE.digest
        self.create(state)


def test_the_record_is_leased_so_two_handlers_never_report_the_same_release_at_once(ledger, clock):
    now = clock.now()
    first = ledger.claim("r1", now, 30)
    assert first is not None and first["sent"] == []
    assert ledger.claim("r1", now + 1, 30) is None  # the other handler backs off …
    assert ledger.due(now + 1) == ["r1"]  # … and marks the record due, so the sweep syncs after it
    first["sent"].append("commit/pending/started")
    ledger.save("r1", first)
    assert ledger.due(now + 2) == ["r1"], "the holder's save keeps the resync asked for meanwhile"
    again = ledger.claim("r1", now + 2, 30)
    assert again["sent"] == ["commit/pending/started"]
    ledger.save("r1", {**again, "retry_at": None})
    assert ledger.due(now + 3600) == []
