"""Workload Identity Federation as GitHub Actions meets it, on loopback: google-auth's real
identity-pool credentials (the config google-github-actions/auth writes) exchange a GitHub-shaped
OIDC token at the local STS, configured from deploy/'s plan, and impersonate the pipeline account
only where the plan's condition and workloadIdentityUser binding admit the run."""
from __future__ import annotations

import json
import time

import pytest
from google.auth import exceptions as auth_exceptions
from google.auth import identity_pool
from google.auth.transport.requests import Request

from deploy.config import load_config
from deploy.model import build_plan
from deploy.wif import GITHUB_ISSUER, github_claims
from local.standin.identity import KeyRing
from local.token_issuer import LocalTokenIssuer
from local.wif import LocalWorkloadIdentity, Provider

NUMBER = "424242424242"
ENV = {"RELEASE_PROJECT": "acme-release", "DEPLOY_GITHUB_REPOSITORY": "acme/noesis2",
       "DEPLOY_GITHUB_REPOSITORY_ID": "123456789", "DEPLOY_PROJECT_NUMBER": NUMBER}
PIPELINE_SA = "noesis2-pipeline@acme-release.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def github():
    issuer = LocalTokenIssuer()  # signs as GitHub's issuer would; its keys stand for GitHub's JWKS
    return issuer


@pytest.fixture(scope="module")
def wif(github, tmp_path_factory):
    config = load_config(ENV)
    provider = Provider.from_plan(build_plan(config), NUMBER)
    running = LocalWorkloadIdentity(provider, certs=lambda: {github.key_id: github.certificate.decode()},
                                    key_dir=tmp_path_factory.mktemp("keys")).start()
    yield running, config.wif_policy
    running.stop()


def credentials(wif, github, tmp_path, claims, *, lifetime_s=300, issued_at=None, account=PIPELINE_SA):
    running, _ = wif
    token = github.mint_claims({**claims, "iss": GITHUB_ISSUER, "aud": running.provider.allowed_audience},
                               lifetime_s=lifetime_s, issued_at=issued_at)
    path = tmp_path / "github-oidc-token"
    path.write_text(token)
    info = running.credential_config(account, path)
    (tmp_path / "gha-creds.json").write_text(json.dumps(info))  # the shape the action writes
    return identity_pool.Credentials.from_info(info, scopes=["https://www.googleapis.com/auth/cloud-platform"])


def test_the_release_workflow_of_the_release_branch_gets_the_pipeline_accounts_token(wif, github, tmp_path):
    running, policy = wif
    creds = credentials(wif, github, tmp_path, github_claims(policy))
    creds.refresh(Request())
    # The token is the pipeline account's: the stand-in's IAM takes it as that account.
    assert KeyRing(running.key_dir).caller({"authorization": f"Bearer {creds.token}"}) == PIPELINE_SA
    assert running.issued[-1] == (PIPELINE_SA, "repo:acme/noesis2:ref:refs/heads/main")


@pytest.mark.parametrize("what, changes", [
    ("another branch", {"ref": "refs/heads/feature/x"}),
    ("another workflow", {"workflow": ".github/workflows/ci.yml"}),
    ("a pull request", {"ref": "refs/pull/7/merge", "event_name": "pull_request"}),
    ("another repository with the same name", {"repository_id": "987654321"}),
])
def test_other_runs_are_refused_at_the_token_exchange(wif, github, tmp_path, what, changes):
    running, policy = wif
    creds = credentials(wif, github, tmp_path, github_claims(policy, **changes))
    with pytest.raises(auth_exceptions.OAuthError, match="rejected by the attribute condition") as refused:
        creds.refresh(Request())
    assert "unauthorized_client" in str(refused.value), what


def test_an_expired_token_is_refused(wif, github, tmp_path):
    _, policy = wif
    creds = credentials(wif, github, tmp_path, github_claims(policy), lifetime_s=300, issued_at=time.time() - 600)
    with pytest.raises(auth_exceptions.OAuthError, match="invalid_grant.*stale to sign-in"):
        creds.refresh(Request())


def test_a_token_for_another_audience_or_signed_by_another_key_is_refused(wif, github, tmp_path):
    running, policy = wif
    other = LocalTokenIssuer()
    for token in (github.mint_claims({**github_claims(policy), "aud": "https://github.com/acme"}),
                  other.mint_claims({**github_claims(policy), "aud": running.provider.allowed_audience})):
        path = tmp_path / "token"
        path.write_text(token)
        creds = identity_pool.Credentials.from_info(running.credential_config(PIPELINE_SA, path),
                                                    scopes=["https://www.googleapis.com/auth/cloud-platform"])
        with pytest.raises(auth_exceptions.OAuthError, match="invalid_grant"):
            creds.refresh(Request())


def test_an_admitted_run_may_not_impersonate_an_account_without_the_binding(wif, github, tmp_path):
    _, policy = wif
    creds = credentials(wif, github, tmp_path, github_claims(policy),
                        account="release-runtime@acme-release.iam.gserviceaccount.com")
    with pytest.raises(auth_exceptions.RefreshError, match=r"PERMISSION_DENIED"):
        creds.refresh(Request())


def test_the_binding_alone_refuses_a_feature_branch_should_the_condition_be_loosened(github, tmp_path_factory,
                                                                                       tmp_path):
    """Defence in depth: with a condition on the repository id only (today's main), the principal
    set still names the release workflow of the release branch, so the exchange succeeds and the
    impersonation is refused."""
    config = load_config({**ENV, "DEPLOY_WIF_CONDITION": "assertion.repository_id == '123456789'"})
    provider = Provider.from_plan(build_plan(config), NUMBER)
    loose = LocalWorkloadIdentity(provider, certs=lambda: {github.key_id: github.certificate.decode()},
                                  key_dir=tmp_path_factory.mktemp("keys-loose")).start()
    try:
        creds = credentials((loose, config.wif_policy), github, tmp_path,
                            github_claims(config.wif_policy, ref="refs/heads/feature/x"))
        with pytest.raises(auth_exceptions.RefreshError, match=r"PERMISSION_DENIED"):
            creds.refresh(Request())
    finally:
        loose.stop()
