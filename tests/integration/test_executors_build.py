"""The Cloud Build executor through the real client library against the local stand-in."""
from __future__ import annotations

import json
import subprocess
import time
import uuid

import grpc
import pytest

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.domain.commands import StartStage
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ExecutorError, TransientError
from shared.domain.events import Outcome
from shared.adapters.executors import RetryPolicy, build_executors
from shared.domain.pipeline import load_pipeline
from shared.domain.state import StageState, StageStatus

PROJECT = "local-project"
CONNECTED = f"projects/{PROJECT}/locations/europe-west3/connections/github/repositories/acme-noesis2"
HEAD = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, log_dir=tmp_path_factory.mktemp("standin-build-logs"))
    with StandIn(cfg) as running:
        # noesis2's builds fetch its private repository through a connection: this checkout plays it
        running.connect_repository(CONNECTED, str(REPO_ROOT))
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint, cloud_run_endpoint=standin.endpoint,
                    artifact_registry="europe-west3-docker.pkg.dev/local-project/noesis2")


@pytest.fixture(scope="module")
def executor(settings):
    return build_executors(settings, retry=FAST)["build"]


@pytest.fixture(scope="module")
def pipeline(settings):
    return load_pipeline(settings.pipeline_file)


def command(stage: str = "lint") -> StartStage:
    release = f"acme-noesis2-{uuid.uuid4().hex[:12]}"
    return StartStage(release, stage, f"{release}.{stage}.a1", 1, "build",
                      {"tag": "v1.0.0-abc1234", "version": "1.0.0", "commit": HEAD})


def running(cmd: StartStage, handle: dict | None = None) -> StageState:
    return StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=cmd.stage_run_id,
                      result={"stage_run_id": cmd.stage_run_id, **(handle or {})})


def wait_finish(executor, pipeline, cmd, state, timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finish = executor.poll(pipeline, pipeline.stage(cmd.stage), state)
        if finish is not None:
            return finish
        time.sleep(0.05)
    raise AssertionError(f"{cmd.stage_run_id} did not finish in {timeout_s}s")


def builds_tagged(standin, cmd) -> list:
    return [b for b in standin.builds if f"run-{cmd.stage_run_id}" in b.tags]


def test_build_succeeds_with_the_step_output_and_duration(standin, executor, pipeline):
    cmd = command("unit")
    standin.set_outcome("build", f"run-{cmd.stage_run_id}", "SUCCESS", json.dumps({"tests": 42, "failed": 0}))
    started = executor.start(pipeline, pipeline.stage("unit"), cmd)
    assert started.finished is None and started.handle["build_id"] and started.handle["log_url"]
    (build,) = builds_tagged(standin, cmd)
    assert list(build.tags) == [f"rel-{cmd.release_id}", f"run-{cmd.stage_run_id}", "stage-unit"]
    assert build.timeout.total_seconds() == 30 * 60 and build.steps[0].name == "python:3.11"
    finish = wait_finish(executor, pipeline, cmd, running(cmd, started.handle))
    assert finish.outcome is Outcome.SUCCEEDED
    assert finish.result["tests"] == 42 and finish.result["build_id"] == started.handle["build_id"]
    assert finish.result["duration_s"] >= 0


def test_build_failure_names_build_and_detail(standin, executor, pipeline):
    cmd = command("lint")
    standin.set_outcome("build", f"run-{cmd.stage_run_id}", "FAILURE", "ruff found 3 errors")
    started = executor.start(pipeline, pipeline.stage("lint"), cmd)
    finish = wait_finish(executor, pipeline, cmd, running(cmd, started.handle))
    assert finish.outcome is Outcome.FAILED
    assert finish.reason == f"build {started.handle['build_id']} ended FAILURE: ruff found 3 errors"


def test_a_repeated_start_reuses_the_build_instead_of_creating_another(standin, executor, pipeline):
    cmd = command("lint")
    standin.set_outcome("build", f"run-{cmd.stage_run_id}", "HANG")
    first = executor.start(pipeline, pipeline.stage("lint"), cmd)
    again = executor.start(pipeline, pipeline.stage("lint"), cmd)
    assert again.handle["build_id"] == first.handle["build_id"] and again.handle.get("reused") is True
    assert len(builds_tagged(standin, cmd)) == 1
    # still running: poll says so, by handle and (handle lost) by the tag alone
    assert executor.poll(pipeline, pipeline.stage("lint"), running(cmd, first.handle)) is None
    assert executor.poll(pipeline, pipeline.stage("lint"), running(cmd)) is None


def test_a_build_created_before_a_crash_is_found_by_its_tag(standin, settings, executor, pipeline):
    from google.cloud.devtools import cloudbuild_v1

    from shared.adapters.executors.cloud_build import build_from_params

    cmd = command("lint")
    standin.set_outcome("build", f"run-{cmd.stage_run_id}", "SUCCESS")
    client = gcp_clients.cloud_build(settings)
    built = build_from_params(settings, pipeline, pipeline.stage("lint"), cmd)
    # The start that "crashed" afterwards created it where the executor creates builds: in its region
    # (a build made under another location is not found there, as on the regional API).
    parent = f"projects/{PROJECT}/locations/{settings.build_region or settings.region}"
    operation = client.create_build(request={"parent": parent, "project_id": PROJECT, "build": built})
    assert isinstance(operation.metadata.build, cloudbuild_v1.Build)
    started = executor.start(pipeline, pipeline.stage("lint"), cmd)
    assert started.handle["build_id"] == operation.metadata.build.id
    assert len(builds_tagged(standin, cmd)) == 1
    # the notification was lost and no handle recorded: poll still finds and reads the build
    assert wait_finish(executor, pipeline, cmd, running(cmd)).outcome is Outcome.SUCCEEDED


def test_unavailable_is_retried_then_succeeds(standin, executor, pipeline):
    cmd = command("lint")
    standin.set_outcome("build", f"run-{cmd.stage_run_id}", "SUCCESS")
    standin.fail_next("CreateBuild", grpc.StatusCode.UNAVAILABLE, times=2)
    standin.fail_next("ListBuilds", grpc.StatusCode.UNAVAILABLE, times=1)
    started = executor.start(pipeline, pipeline.stage("lint"), cmd)
    assert started.handle["build_id"] and len(builds_tagged(standin, cmd)) == 1


def test_unavailable_for_longer_than_the_retry_budget_is_transient(standin, settings, executor, pipeline):
    cmd = command("lint")
    standin.fail_next("ListBuilds", grpc.StatusCode.UNAVAILABLE, times=60)
    with pytest.raises(TransientError, match="still failing after retries"):
        executor.start(pipeline, pipeline.stage("lint"), cmd)
    drain_faults(gcp_clients.cloud_build(settings))
    assert builds_tagged(standin, cmd) == []


def drain_faults(client) -> None:
    """Use up the injected UNAVAILABLEs the retry budget left over, so later tests start clean."""
    from google.api_core import exceptions

    for _ in range(100):
        try:
            list(client.list_builds(project_id=PROJECT, filter='tags="none"', retry=None))
            return
        except exceptions.ServiceUnavailable:
            continue


def test_permission_denied_fails_naming_permission_and_stage(standin, executor, pipeline):
    cmd = command("build")
    standin.fail_next(
        "CreateBuild", grpc.StatusCode.PERMISSION_DENIED,
        message="The caller does not have permission 'cloudbuild.builds.create' on project 'local-project'",
    )
    with pytest.raises(ExecutorError) as raised:
        executor.start(pipeline, pipeline.stage("build"), cmd)
    message = str(raised.value)
    assert "missing permission cloudbuild.builds.create" in message
    assert f"release {cmd.release_id}, stage build" in message
    assert builds_tagged(standin, cmd) == []
