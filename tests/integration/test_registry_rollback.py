"""Rollback from Artifact Registry: the real artifactregistry_v1 and run_v2 clients against the
stand-in, with images under the registry served as real local processes (the sample app)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.domain.commands import StartStage
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ConfigError, ExecutorError
from shared.adapters.executors import RetryPolicy, build_executors, rollback_from_registry, rollback_to_tag
from shared.adapters.executors.registry import last_good_tag, package_path
from shared.domain.pipeline import load_pipeline
from shared.domain.state import StageState, StageStatus

PROJECT, REGION = "local-project", "europe-west3"
REGISTRY = f"{REGION}-docker.pkg.dev/{PROJECT}/noesis2"
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)
TAGS = ("v1.0.0-aaaaaaa", "v1.1.0-bbbbbbb", "v1.2.0-ccccccc")
RELCTL = Path(sys.executable).parent / "relctl"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    # Any tag of REGISTRY/noesis2 runs as the sample app, so a rollback is served for real.
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT,
                        local_images=frozenset({"local", f"{REGISTRY}/noesis2"}),
                        log_dir=tmp_path_factory.mktemp("standin-registry-logs"))
    with StandIn(cfg) as running:
        for tag in (*TAGS, "latest"):
            running.push_image(f"{REGISTRY}/noesis2:{tag}")
        yield running


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory) -> Path:
    def deploy(stage_id: str, service: str) -> dict:
        return {"id": stage_id, "kind": "deploy", "environment": "staging", "timeout": "5m",
                "params": {"services": [service], "traffic_percent": 100,
                           "env": {"VERSION": "${version}", "RELEASE_TAG": "${tag}"}}}

    path = tmp_path_factory.mktemp("registry-pipeline") / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "noesis2", "image": "noesis2", "stages": [
        deploy("deploy-web", "reg-web"), deploy("deploy-cli", "reg-cli"), deploy("deploy-other", "reg-other")]}))
    return path


@pytest.fixture(scope="module")
def settings(standin, pipeline_file) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_build_endpoint=standin.endpoint,
                    cloud_run_endpoint=standin.endpoint, artifact_registry_endpoint=standin.endpoint,
                    artifact_registry=REGISTRY, pipeline_file=str(pipeline_file))


@pytest.fixture(scope="module")
def registry(settings):
    return gcp_clients.artifact_registry(settings)


def deploy(settings, stage_id: str, tag: str) -> str:
    """Deploy ``tag`` through the real deploy executor; returns the revision it made."""
    pipeline = load_pipeline(settings.pipeline_file)
    executor = build_executors(settings, retry=FAST)["deploy"]
    version, commit = tag[1:].rsplit("-", 1)
    run_id = f"rel-{commit}.{stage_id}.a1"
    command = StartStage(f"rel-{commit}", stage_id, run_id, 1, "deploy",
                         {"tag": tag, "version": version, "commit": commit * 5})
    started = executor.start(pipeline, pipeline.stage(stage_id), command)
    state = StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=run_id, result=dict(started.handle))
    for _ in range(200):
        finish = executor.poll(pipeline, pipeline.stage(stage_id), state)
        if finish is not None:
            assert finish.outcome.value == "succeeded", finish.reason
            return started.handle["revisions"][0]["revision"]
        time.sleep(0.05)
    raise AssertionError(f"deploy of {tag} did not finish")


def service_of(standin, service_id: str):
    return next(s for s in standin.services if s.name.endswith(f"/services/{service_id}"))


def revision_of(standin, short: str):
    return next(r for r in standin.revisions if r.name.endswith(f"/revisions/{short}"))


def served(service) -> dict[str, int]:
    return {s.revision: s.percent for s in service.traffic_statuses}


# -- the registry itself --------------------------------------------------------------------
def test_a_successful_build_pushes_its_images_a_failed_one_does_not(standin, settings, registry):
    builds = gcp_clients.cloud_build(settings)
    good, bad = f"{REGISTRY}/built:v0.1.0-1111111", f"{REGISTRY}/built:v0.2.0-2222222"

    def build(code: str, images: list[str]):
        step = cloudbuild_v1.BuildStep(name="local", entrypoint=sys.executable, args=["-c", code])
        return builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(steps=[step], images=images))

    # A local step "builds" an image by naming it in the stand-in's view of the build's docker daemon.
    built = "import os; open(os.environ['STANDIN_DOCKER_IMAGES'], 'a').write({!r})"
    build(built.format(f"{good}\nlocal/elsewhere:v1\n"), [good, "local/elsewhere:v1"]).result(timeout=20)
    with pytest.raises(gexc.GoogleAPICallError, match="Build failed"):  # a non-registry image is not ours to record
        build(built.format(f"{bad}\n") + "; raise SystemExit(3)", [bad]).result(timeout=20)
    parent = package_path(settings, "built")
    assert [t.name.rsplit("/", 1)[-1] for t in registry.list_tags(parent=parent)] == ["v0.1.0-1111111"]
    (image,) = [i for i in registry.list_docker_images(parent=parent.split("/packages/")[0])
                if "/dockerImages/built@" in i.name]
    assert image.uri.startswith(f"{REGISTRY}/built@sha256:") and list(image.tags) == ["v0.1.0-1111111"]
    tag = registry.get_tag(name=f"{parent}/tags/v0.1.0-1111111")
    assert tag.version == f"{parent}/versions/{image.uri.rsplit('@', 1)[1]}"
    with pytest.raises(gexc.NotFound):
        registry.get_tag(name=f"{parent}/tags/v0.2.0-2222222")
    with pytest.raises(gexc.NotFound):  # a repository never pushed to does not exist
        registry.list_tags(parent=f"projects/{PROJECT}/locations/{REGION}/repositories/none/packages/built")


def test_a_pushed_tag_moves_to_the_new_digest_and_pages_cover_everything(standin, settings, registry):
    first = standin.push_image(f"{REGISTRY}/moving:v3.0.0-3333333")
    second = standin.push_image(f"{REGISTRY}/moving:v3.0.0-3333333", digest="sha256:" + "ab" * 32)
    assert first != second and second.endswith("@sha256:" + "ab" * 32)
    images = {i.uri: list(i.tags) for i in standin.docker_images if "/moving@" in i.uri}
    assert images == {first: [], second: ["v3.0.0-3333333"]}
    for n in range(5):
        standin.push_image(f"{REGISTRY}/moving:v3.0.{n + 1}-3333333")
    listed = [t.name.rsplit("/", 1)[-1]
              for t in registry.list_tags(request={"parent": package_path(settings, "moving"), "page_size": 2})]
    assert sorted(listed) == sorted(["v3.0.0-3333333"] + [f"v3.0.{n + 1}-3333333" for n in range(5)])
    assert last_good_tag(settings, "moving", "v3.0.3-3333333", registry) == "v3.0.2-3333333"
    assert last_good_tag(settings, "moving", "v3.0.0-3333333", registry) is None


# -- rolling back ----------------------------------------------------------------------------
def test_rollback_from_registry_redeploys_the_previous_tag_and_serves_it(standin, settings):
    newest = deploy(settings, "deploy-web", TAGS[2])  # only the newest ever ran as a revision
    assert served(service_of(standin, "reg-web")) == {newest: 100}
    before = len(standin.revisions)

    moved = rollback_from_registry(settings, "reg-web", wait_s=30)
    assert (moved["tag"], moved["before_tag"], moved["from"], moved["created"]) == (TAGS[1], TAGS[2], newest, True)
    web = service_of(standin, "reg-web")
    assert len(standin.revisions) == before + 1 and served(web) == {moved["revision"]: 100}
    revision = revision_of(standin, moved["revision"])
    assert dict(revision.labels) == {"version": "1-1-0", "commit": "bbbbbbb"}
    assert revision.containers[0].image == f"{REGISTRY}/noesis2:{TAGS[1]}"
    env = {e.name: e.value for e in revision.containers[0].env}
    assert env == {"VERSION": "1.1.0", "RELEASE_TAG": TAGS[1]}  # the deploy stage's env, for that tag
    answer = requests.get(web.uri + "/", timeout=5)
    assert answer.json() == {"version": "1.1.0", "revision": moved["revision"]}
    assert answer.headers["X-Serving-Revision"] == moved["revision"]

    # again: below 1.1.0 there is 1.0.0; below that, nothing ('latest' is no release tag)
    assert rollback_from_registry(settings, "reg-web", wait_s=30)["tag"] == TAGS[0]
    assert requests.get(service_of(standin, "reg-web").uri + "/", timeout=5).json()["version"] == "1.0.0"
    with pytest.raises(ExecutorError, match=f"no release tag of noesis2 older than {TAGS[0]}; nothing to roll back"):
        rollback_from_registry(settings, "reg-web")

    # a tag whose revision still exists: the fast path only moves traffic back to it
    count = len(standin.revisions)
    moved = rollback_to_tag(settings, "reg-web", TAGS[2])
    assert (moved["revision"], moved["created"]) == (newest, False)
    assert len(standin.revisions) == count and served(service_of(standin, "reg-web")) == {newest: 100}


def test_a_rollback_needs_a_release_tag_the_registry_holds(standin, settings):
    deploy(settings, "deploy-other", TAGS[1])
    with pytest.raises(ExecutorError, match="needs a release tag .* a deployment without a tag is not allowed"):
        rollback_to_tag(settings, "reg-other", "latest")
    with pytest.raises(ExecutorError, match=f"{REGISTRY}/noesis2:v0.0.1-0000000 is not in the registry"):
        rollback_to_tag(settings, "reg-other", "v0.0.1-0000000")


@pytest.fixture
def relctl(emulators, unique_prefix, tmp_path, settings):
    """The installed relctl rollback, through an operator function that reaches the stand-in and the registry."""
    from local.token_issuer import LocalTokenIssuer
    from tests.integration.test_cli import relctl_env, running_operator_function

    extra = {"RELEASE_PROJECT": PROJECT, "GOOGLE_CLOUD_PROJECT": PROJECT, "RELEASE_REGION": REGION,
             "RELEASE_CLOUD_RUN_ENDPOINT": settings.cloud_run_endpoint,
             "RELEASE_ARTIFACT_REGISTRY_ENDPOINT": settings.artifact_registry_endpoint,
             "RELEASE_ARTIFACT_REGISTRY": REGISTRY, "RELEASE_PIPELINE_FILE": settings.pipeline_file}
    issuer = LocalTokenIssuer().start()
    try:
        with running_operator_function(emulators, unique_prefix, issuer, tmp_path / "operator.log", **extra) as op:
            env = relctl_env(emulators, unique_prefix, f"events-{unique_prefix.strip('_')}", **extra, **op)

            def run(*args):
                proc = subprocess.run([str(RELCTL), "rollback", *args, "--reason", "test", "--yes"], capture_output=True, text=True, timeout=60,
                                      env=env, cwd=REPO_ROOT)
                return proc.returncode, proc.stdout, proc.stderr

            yield run
    finally:
        issuer.stop()


@pytest.mark.emulators
def test_relctl_rollback_from_registry(standin, settings, relctl):
    assert RELCTL.exists(), f"{RELCTL} missing: run .venv/bin/pip install --no-deps -e ."
    newest = deploy(settings, "deploy-cli", TAGS[2])
    code, out, err = relctl("reg-cli", "--from-registry", "--image", "noesis2")
    assert code == 0, err
    web = service_of(standin, "reg-cli")
    (revision,) = served(web)
    assert out.startswith(f"rolled back reg-cli: 100 % to {revision} (new revision from {REGISTRY}/noesis2:"
                          f"{TAGS[1]}; tag {TAGS[1]}, version 1-1-0, commit bbbbbbb), was {newest}; operation ")
    assert requests.get(web.uri + "/", timeout=5).json()["version"] == "1.1.0"

    for args, code_wanted, message in (
        (("--to-tag", "v9.9.9-9999999"), 1, f"{REGISTRY}/noesis2:v9.9.9-9999999 is not in the registry"),
        (("--image", "noesis2"), 2, "relctl rollback: error: --image goes with --to-tag or --from-registry"),
    ):
        code, out, err = relctl("reg-cli", *args)
        assert code == code_wanted and message in err and err.count("\n") == 1, err
    local = Settings(**{**settings.__dict__, "artifact_registry": "local"})
    with pytest.raises(ConfigError, match="RELEASE_ARTIFACT_REGISTRY='local' is not "
                                            "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY"):
        rollback_from_registry(local, "reg-cli")
