"""Images are things (issue 22): a build pushes the tree it built by digest, Cloud Run's
stand-in runs the code of the image a template names, and the job and deploy stages run
the digest their release's build produced, through the real client libraries.

Two commits of this repository make two images: OLD lacks the sample app's newest
migration, NEW has it, so what a migrate job applied shows which image ran.
"""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from local.standin.images import archive_tree
from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors import RetryPolicy, build_executors
from shared.adapters.executors.run_jobs import RunJobExecutor
from shared.app.config import REPO_ROOT, Settings
from shared.domain.commands import StartStage
from shared.domain.errors import ExecutorError
from shared.domain.events import RUN_SECRET_CHARS, Outcome, stage_run_id
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import StageState, StageStatus
from tests.sample_commits import two_commits

PROJECT, REGION = "local-project", "europe-west3"
REGISTRY = f"{REGION}-docker.pkg.dev/{PROJECT}/sample"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=10)
WRITE_IMAGE = "import os, sys; open(os.environ['STANDIN_DOCKER_IMAGES'], 'a').write(sys.argv[1] + '\\n')"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, str]:
    return two_commits(tmp_path_factory.mktemp("source") / "repo")


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT, local_images=frozenset({"local"}),
                        log_dir=tmp_path_factory.mktemp("standin-images-logs"), revision_ready_timeout_s=20)
    with StandIn(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin, source) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_build_endpoint=standin.endpoint,
                    cloud_run_endpoint=standin.endpoint, artifact_registry_endpoint=standin.endpoint,
                    artifact_registry=REGISTRY, source_url=source["url"])


@pytest.fixture(scope="module")
def pipeline():
    return parse_pipeline({"name": "sample-app", "image": "sample-app", "stages": [
        {"id": "build", "kind": "build", "timeout": "2m", "params": {
            "source": "git", "images": ["${image}"],
            "steps": [{"name": "local", "entrypoint": sys.executable, "args": ["-c", WRITE_IMAGE, "${image}"]}]}},
        {"id": "migrate", "kind": "job", "environment": "staging", "timeout": "2m", "params": {"job": "img-migrate"}},
        {"id": "deploy", "kind": "deploy", "environment": "staging", "timeout": "2m",
         "params": {"services": ["img-web"], "traffic_percent": 100}},
    ]})


@pytest.fixture(scope="module")
def executors(settings):
    return build_executors(settings, retry=FAST)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("img-data")


@pytest.fixture(scope="module", autouse=True)
def resources(settings, data_dir):
    """A migrate job and a web service as deploy/ leaves them: on a base image that runs here."""
    container = run_v2.Container(image="local", command=[sys.executable, "-m", "sample_app.migrate"],
                                 env=[run_v2.EnvVar(name="DATA_DIR", value=str(data_dir))])
    gcp_clients.run_jobs(settings).create_job(parent=PARENT, job_id="img-migrate", job=run_v2.Job(
        template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))).result(10)
    gcp_clients.run_services(settings).create_service(parent=PARENT, service_id="img-web", service=run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="local")]))).result(60)


def command(stage: str, kind: str, release: str, commit: str, digest: str = "") -> StartStage:
    inputs = {"tag": f"v1.0.0-{commit[:7]}", "version": "1.0.0", "commit": commit, "repo": "example/sample-app"}
    if digest:
        inputs["digest"] = digest  # what the gate passes on from the build's result
    run_id = stage_run_id(release, stage, 1, uuid.uuid4().hex[:RUN_SECRET_CHARS])
    return StartStage(release, stage, run_id, 1, kind, inputs)


def wait(executor, pipeline, cmd, handle, timeout_s: float = 60):
    state = StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=cmd.stage_run_id, result=dict(handle))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finish = executor.poll(pipeline, pipeline.stage(cmd.stage), state)
        if finish is not None:
            return finish
        time.sleep(0.1)
    raise AssertionError(f"{cmd.stage_run_id} did not finish")


@pytest.fixture(scope="module")
def builds(standin, executors, pipeline, source) -> dict[str, dict]:
    """Each commit built once, as the build stage does; its result is what the gate records."""
    out = {}
    for which in ("old", "new"):
        release = f"example-sample-app-{which}{uuid.uuid4().hex[:6]}"
        cmd = command("build", "build", release, source[which])
        started = executors["build"].start(pipeline, pipeline.stage("build"), cmd)
        standin.finished_build(started.handle["build_id"], timeout_s=120)
        finish = wait(executors["build"], pipeline, cmd, started.handle)
        assert finish.outcome is Outcome.SUCCEEDED, finish.reason
        out[which] = {"release": release, "commit": source[which], **finish.result}
    return out


def latest_migrate_run(data_dir: Path) -> tuple[str, str, str]:
    with sqlite3.connect(data_dir / "app.sqlite3") as conn:
        return conn.execute("SELECT release_id, carried, applied FROM migrate_runs ORDER BY id DESC LIMIT 1").fetchone()


def test_a_build_pushes_the_tree_it_built_under_the_digest_of_that_tree(standin, builds, source, tmp_path):
    """The digest is the sha256 of the tree's reproducible archive, and the registry holds it."""
    checkout = tmp_path / "old"
    checkout.mkdir()
    archive = subprocess.run(["git", "-C", source["url"], "archive", source["old"]], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)
    assert builds["old"]["digest"] == "sha256:" + hashlib.sha256(archive_tree(checkout)).hexdigest()
    assert builds["old"]["digest"] != builds["new"]["digest"], "two commits, two images"
    held = {image.uri.rsplit("@", 1)[1]: image for image in standin.docker_images}
    assert {builds["old"]["digest"], builds["new"]["digest"]} <= set(held)
    assert builds["new"]["images"][0]["name"] == f"{REGISTRY}/sample-app:v1.0.0-{source['new'][:7]}"


def test_a_template_naming_an_image_the_registry_does_not_hold_is_refused(settings, builds):
    jobs = gcp_clients.run_jobs(settings)
    ghost = f"{REGISTRY}/sample-app@sha256:{'0' * 64}"
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(
        containers=[run_v2.Container(image=ghost, command=[sys.executable, "-c", "pass"])])))
    with pytest.raises(gexc.FailedPrecondition, match=f"Image '{ghost}' not found"):
        jobs.create_job(parent=PARENT, job_id="ghost-job", job=job).result(10)
    stored = jobs.get_job(name=f"{PARENT}/jobs/ghost-job")
    assert stored.terminal_condition.reason == run_v2.Condition.CommonReason.CONTAINER_MISSING
    with pytest.raises(gexc.FailedPrecondition, match="not ready: Image"):
        jobs.run_job(name=f"{PARENT}/jobs/ghost-job")

    services = gcp_clients.run_services(settings)
    missing_tag = f"{REGISTRY}/sample-app:never-pushed"
    with pytest.raises(gexc.FailedPrecondition, match=f"Image '{missing_tag}' not found"):
        services.create_service(parent=PARENT, service_id="ghost-web", service=run_v2.Service(
            template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=missing_tag)]))).result(30)
    revision = next(iter(gcp_clients.run_revisions(settings).list_revisions(parent=f"{PARENT}/services/ghost-web")))
    assert revision.containers[0].image == missing_tag  # the template's string, as on GCP
    assert revision.conditions[0].reason == run_v2.Condition.CommonReason.CONTAINER_MISSING

    # The same template naming a digest the registry holds is accepted.
    job.template.template.containers[0].image = f"{REGISTRY}/sample-app@{builds['old']['digest']}"
    jobs.update_job(job=run_v2.Job(name=f"{PARENT}/jobs/ghost-job", template=job.template)).result(10)
    assert jobs.get_job(name=f"{PARENT}/jobs/ghost-job").terminal_condition.state.name == "CONDITION_SUCCEEDED"


def test_the_job_and_deploy_stages_run_their_release_digest_and_a_replay_runs_the_older_one(
        settings, executors, pipeline, builds, data_dir):
    new, old = builds["new"], builds["old"]
    new_image, old_image = f"{REGISTRY}/sample-app@{new['digest']}", f"{REGISTRY}/sample-app@{old['digest']}"

    migrate = command("migrate", "job", new["release"], new["commit"], new["digest"])
    started = executors["job"].start(pipeline, pipeline.stage("migrate"), migrate)
    finish = wait(executors["job"], pipeline, migrate, started.handle)
    assert finish.outcome is Outcome.SUCCEEDED, finish.reason
    assert started.handle["image"] == finish.result["image"] == new_image
    assert latest_migrate_run(data_dir) == (new["release"], "0001_feature_flags.sql", "0001_feature_flags.sql")

    deploy = command("deploy", "deploy", new["release"], new["commit"], new["digest"])
    started = executors["deploy"].start(pipeline, pipeline.stage("deploy"), deploy)
    assert started.handle["image"] == new_image
    assert wait(executors["deploy"], pipeline, deploy, started.handle).outcome is Outcome.SUCCEEDED

    # A replay of the older release's migrate runs the older image: its code carries no migration.
    replay = command("migrate", "job", old["release"], old["commit"], old["digest"])
    started = executors["job"].start(pipeline, pipeline.stage("migrate"), replay)
    finish = wait(executors["job"], pipeline, replay, started.handle)
    assert finish.outcome is Outcome.SUCCEEDED, finish.reason
    assert finish.result["image"] == old_image
    assert latest_migrate_run(data_dir) == (old["release"], "", "")

    # Read back through the Cloud Run clients: each release's executions and revisions name its digest.
    executions = gcp_clients.run_executions(settings).list_executions(parent=f"{PARENT}/jobs/img-migrate")
    ran = {}
    for execution in executions:
        env = {e.name: e.value for e in execution.template.containers[0].env}
        ran.setdefault(env["RELEASE_ID"], set()).add(execution.template.containers[0].image)
    assert ran == {new["release"]: {new_image}, old["release"]: {old_image}}
    revisions = gcp_clients.run_revisions(settings).list_revisions(parent=f"{PARENT}/services/img-web")
    released = [r for r in revisions if r.labels.get("commit")]  # the base revision carries none
    assert len(released) == 1 and released[0].containers[0].image == new_image


class RacingJobs:
    """The real JobsClient, with another writer (another release's dispatcher, through its own
    real client) setting the job's image after our UpdateJob and before our RunJob."""

    def __init__(self, jobs, other_image: str):
        self._jobs = jobs
        self._other = other_image

    def __getattr__(self, name):
        return getattr(self._jobs, name)

    def run_job(self, request, **kwargs):
        job = self._jobs.get_job(name=request.name)
        job.template.template.containers[0].image = self._other
        self._jobs.update_job(job=job).result(10)
        return self._jobs.run_job(request=request, **kwargs)


def test_another_writer_changing_the_image_between_update_and_run_fails_the_stage_naming_both(
        settings, pipeline, builds):
    new, old = builds["new"], builds["old"]
    real = gcp_clients.run_jobs(settings)
    racing = RunJobExecutor(settings, RacingJobs(real, f"{REGISTRY}/sample-app@{old['digest']}"),
                            gcp_clients.run_executions(settings))
    cmd = command("migrate", "job", new["release"], new["commit"], new["digest"])
    with pytest.raises(ExecutorError) as failed:
        racing.start(pipeline, pipeline.stage("migrate"), cmd)
    assert new["digest"] in str(failed.value) and old["digest"] in str(failed.value)
    assert "between UpdateJob and RunJob" in str(failed.value)

    # A repeated start (the dispatcher retrying) finds that execution and refuses it the same way,
    # and the poll of a recorded handle fails it too: nothing of the other image becomes this release's.
    plain = RunJobExecutor(settings, real, gcp_clients.run_executions(settings))
    with pytest.raises(ExecutorError, match=old["digest"]):
        plain.start(pipeline, pipeline.stage("migrate"), cmd)
    state = StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=cmd.stage_run_id,
                       result={"image": f"{REGISTRY}/sample-app@{new['digest']}"})
    finish = plain.poll(pipeline, pipeline.stage("migrate"), state)
    assert finish.outcome is Outcome.FAILED and new["digest"] in finish.reason and old["digest"] in finish.reason
    assert finish.result == {}


def test_a_template_naming_a_tag_runs_the_image_the_tag_points_at(settings, builds, source, tmp_path):
    """As Cloud Run resolves a tag when it deploys: the code run is the image the tag names now."""
    jobs = gcp_clients.run_jobs(settings)
    for which in ("old", "new"):
        image = f"{REGISTRY}/sample-app:v1.0.0-{source[which][:7]}"
        container = run_v2.Container(image=image, command=[sys.executable, "-m", "sample_app.migrate"],
                                     env=[run_v2.EnvVar(name="DATA_DIR", value=str(tmp_path / which))])
        job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
        jobs.create_job(parent=PARENT, job_id=f"tag-{which}", job=job).result(10)
        execution = jobs.run_job(name=f"{PARENT}/jobs/tag-{which}").result(60)
        assert execution.template.containers[0].image == image  # the string the template names
        with sqlite3.connect(tmp_path / which / "app.sqlite3") as conn:
            carried = conn.execute("SELECT carried FROM migrate_runs").fetchone()[0]
        assert carried == ("" if which == "old" else "0001_feature_flags.sql")
