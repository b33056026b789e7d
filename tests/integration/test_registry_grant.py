"""The runtime account's registry grant, shown: with deploy/'s bindings a rollback from the
registry lists and reads the release images' tags (the operator function's ListTags, GetTag);
without the tag reader on the release repository it is PERMISSION_DENIED naming the permission,
and the grant reaches no other repository. The real artifactregistry_v1 client, as the runtime
account, against the stand-in enforcing the plan's policies."""
from __future__ import annotations

from pathlib import Path

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


# -- relctl rollback --from-registry through the operator function, with the plan's grants only --------
@pytest.fixture
def served_world(tmp_path, monkeypatch, emulators, unique_prefix):
    """The stand-in enforcing the plan's policies (registry = the plan's release repository), a service
    running the newest release tag as the sample app, and relctl's rollback through the operator
    function, which calls the APIs as the runtime account."""
    import subprocess
    import sys

    import yaml
    from google.cloud import run_v2

    from local.token_issuer import LocalTokenIssuer
    from shared.app.config import REPO_ROOT
    from tests.integration.test_cli import relctl_env, running_operator_function
    from tests.integration.test_registry_rollback import deploy

    key = mint_key(tmp_path / "keys", RUNTIME)
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text(yaml.safe_dump({"name": "app", "image": "app", "stages": [
        {"id": "deploy-web", "kind": "deploy", "environment": "staging", "timeout": "5m",
         "params": {"services": ["grant-web"], "traffic_percent": 100,
                    "env": {"VERSION": "${version}", "RELEASE_TAG": "${tag}"}}}]}))
    cfg = StandInConfig(project=PROJECT, region=REGION, project_number=NUMBER, log_dir=tmp_path / "logs",
                        key_dir=tmp_path / "keys", workspace=REPO_ROOT, local_images=frozenset({f"{REGISTRY}/app"}))
    config = DeployConfig(settings=Settings(project=PROJECT, region=REGION, artifact_registry=REGISTRY),
                          pipeline=PIPELINE, github_repository="acme/app", project_number=NUMBER,
                          pipeline_sa_id="pipeline", app_service_account_list=(APP_SA,))
    with StandIn(cfg) as running:
        for tag in ("v1.0.0-aaaaaaa", "v1.1.0-bbbbbbb", "latest"):
            running.push_image(f"{REGISTRY}/app:{tag}")
        s = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=running.endpoint,
                     artifact_registry_endpoint=running.endpoint, artifact_registry=REGISTRY,
                     pipeline_file=str(pipeline_file))
        gcp_clients.run_services(s).create_service(  # as the project's owner, before IAM is enforced
            parent=f"projects/{PROJECT}/locations/{REGION}", service_id="grant-web", service=run_v2.Service(
                template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=f"{REGISTRY}/app:latest")],
                                                 service_account=APP_SA))).result(60)
        found = policies(build_plan(config))
        running.set_iam_policy(found.project)
        running.enforce_iam(found.accounts, found.custom_roles, found.queues, found.repositories)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
        deploy(s, "deploy-web", "v1.1.0-bbbbbbb")  # the newest tag serves, deployed as the runtime account
        extra = {"RELEASE_PROJECT": PROJECT, "GOOGLE_CLOUD_PROJECT": PROJECT, "RELEASE_REGION": REGION,
                 "RELEASE_CLOUD_RUN_ENDPOINT": running.endpoint, "RELEASE_ARTIFACT_REGISTRY_ENDPOINT": running.endpoint,
                 "RELEASE_ARTIFACT_REGISTRY": REGISTRY, "RELEASE_PIPELINE_FILE": str(pipeline_file),
                 "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
        issuer = LocalTokenIssuer().start()
        try:
            with running_operator_function(emulators, unique_prefix, issuer, tmp_path / "operator.log", **extra) as op:
                env = relctl_env(emulators, unique_prefix, f"events-{unique_prefix.strip('_')}", **extra, **op)

                def relctl(*args):
                    proc = subprocess.run([str(Path(sys.executable).parent / "relctl"), "rollback", *args, "--reason", "test", "--yes"],
                                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT)
                    return proc.returncode, proc.stdout, proc.stderr

                yield running, relctl
        finally:
            issuer.stop()


@pytest.mark.emulators
def test_relctl_rollback_from_registry_with_the_plans_grants_serves_the_earlier_tag(served_world):
    import requests

    standin, relctl = served_world
    code, out, err = relctl("grant-web", "--from-registry", "--image", "app")
    assert code == 0, err
    assert "new revision from " + f"{REGISTRY}/app:v1.0.0-aaaaaaa" in out
    web = next(s for s in standin.services if s.name.endswith("/services/grant-web"))
    assert requests.get(web.uri + "/", timeout=10).json()["version"] == "1.0.0"
    standin.revoke(f"serviceAccount:{RUNTIME}", TAG_READER, repository="app")
    code, out, err = relctl("grant-web", "--from-registry", "--image", "app")
    assert code != 0 and "artifactregistry.tags.list" in err, err
