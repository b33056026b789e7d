"""The runtime account's registry grant, shown: with deploy/'s bindings a rollback from the
registry lists and reads the release images' tags (the operator function's ListTags, GetTag);
without the tag reader on the release repository it is PERMISSION_DENIED naming the permission,
and the grant reaches no other repository. The real artifactregistry_v1 client, as the runtime
account, against the stand-in enforcing the plan's policies."""
from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from deploy.config import DeployConfig
from deploy.iam_policy import policies
from deploy.model import REGISTRY_TAG_READER_ROLE_ID, build_plan
from local.standin.identity import mint_key
from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors.registry import last_good_tag, tag_exists
from shared.app.config import Settings
from tests.integration.test_iam_least_privilege import APP_SA, NUMBER, PIPELINE, PROJECT, REGION, RUNTIME

REGISTRY = f"{REGION}-docker.pkg.dev/{PROJECT}/app"
OTHER = f"{REGION}-docker.pkg.dev/{PROJECT}/other"
TAG_READER = f"projects/{PROJECT}/roles/{REGISTRY_TAG_READER_ROLE_ID}"


@pytest.fixture
def standin(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(mint_key(keys, RUNTIME)))
    cfg = StandInConfig(project=PROJECT, region=REGION, project_number=NUMBER, log_dir=tmp_path / "logs", key_dir=keys)
    config = DeployConfig(settings=Settings(project=PROJECT, region=REGION, artifact_registry=REGISTRY),
                          pipeline=PIPELINE, github_repository="acme/app", project_number=NUMBER,
                          pipeline_sa_id="pipeline", app_service_account_list=(APP_SA,))
    with StandIn(cfg) as running:
        for image in (f"{REGISTRY}/app:v1.0.0-aaaaaaa", f"{REGISTRY}/app:v1.1.0-bbbbbbb", f"{OTHER}/app:v1.0.0-ccccccc"):
            running.push_image(image)
        found = policies(build_plan(config))
        running.set_iam_policy(found.project)
        running.enforce_iam(found.accounts, found.custom_roles, found.queues, found.repositories)
        yield running


def settings(standin, registry: str = REGISTRY) -> Settings:
    return Settings(project=PROJECT, region=REGION, artifact_registry=registry,
                    artifact_registry_endpoint=standin.endpoint)


def test_the_plan_lets_the_runtime_account_read_the_release_tags(standin):
    s = settings(standin)
    client = gcp_clients.artifact_registry(s)
    assert last_good_tag(s, "app", "v1.1.0-bbbbbbb", client) == "v1.0.0-aaaaaaa"
    assert tag_exists(s, "app", "v1.0.0-aaaaaaa", client)


def test_the_grant_is_on_the_release_repository_only(standin):
    s = settings(standin, OTHER)
    with pytest.raises(gexc.PermissionDenied, match="artifactregistry.tags.list"):
        last_good_tag(s, "app", "v1.1.0-bbbbbbb", gcp_clients.artifact_registry(s))


def test_without_the_tag_reader_grant_a_rollback_from_the_registry_is_denied(standin):
    standin.revoke(f"serviceAccount:{RUNTIME}", TAG_READER, repository="app")
    s = settings(standin)
    client = gcp_clients.artifact_registry(s)
    with pytest.raises(gexc.PermissionDenied, match="'artifactregistry.tags.list' denied"):
        last_good_tag(s, "app", "v1.1.0-bbbbbbb", client)
    with pytest.raises(gexc.PermissionDenied, match="'artifactregistry.tags.get' denied"):
        tag_exists(s, "app", "v1.0.0-aaaaaaa", client)
