"""The stand-in through the real Cloud Build and Resource Manager clients: builds, faults, IAM."""
from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings

PROJECT = "local-project"
Status = cloudbuild_v1.Build.Status


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, workspace=REPO_ROOT, local_images=frozenset({"local"}),
                        log_dir=tmp_path_factory.mktemp("standin-logs"))
    with StandIn(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint, iam_endpoint=standin.endpoint,
                    cloud_run_endpoint=standin.endpoint)


@pytest.fixture(scope="module")
def builds(settings) -> cloudbuild_v1.CloudBuildClient:
    return gcp_clients.cloud_build(settings)


def python_step(code: str, **extra) -> cloudbuild_v1.BuildStep:
    return cloudbuild_v1.BuildStep(name="local", entrypoint=sys.executable, args=["-c", code], **extra)


def wait_build(client, build_id: str, timeout_s: float = 20) -> cloudbuild_v1.Build:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        build = client.get_build(project_id=PROJECT, id=build_id)
        if build.status not in (Status.QUEUED, Status.WORKING):
            return build
        time.sleep(0.05)
    raise AssertionError(f"build {build_id} still {build.status.name} after {timeout_s}s")


def create(client, steps, tags=(), timeout_s: int = 600) -> str:
    build = cloudbuild_v1.Build(steps=steps, tags=list(tags), timeout={"seconds": timeout_s})
    operation = client.create_build(project_id=PROJECT, build=build)
    return operation.metadata.build.id


def head_source() -> cloudbuild_v1.Source:
    """This repository's HEAD as the build's gitSource (the stand-in clones local repositories)."""
    return cloudbuild_v1.Source(git_source=cloudbuild_v1.GitSource(url=str(REPO_ROOT), revision="HEAD"))


def test_local_steps_run_with_env_dir_and_step_outputs(builds, standin, tmp_path):
    marker = tmp_path / "ran.txt"
    steps = [
        python_step("import os,pathlib; pathlib.Path(os.environ['MARKER']).write_text("
                    "os.getcwd() + ' ' + str(sorted(os.listdir('.'))[:2]))",
                    env=[f"MARKER={marker}"], dir="sample_app"),
        python_step("import os; open(os.environ['BUILDER_OUTPUT']+'/output','w').write('x'*60000)"),
    ]
    operation = builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(
        steps=steps, tags=["run-a"], source=head_source()))
    queued = operation.metadata.build
    assert queued.id and queued.status == Status.QUEUED and queued.create_time and queued.log_url
    build = operation.result(timeout=20)
    assert build.status == Status.SUCCESS
    cwd, files = marker.read_text().split(" ", 1)
    assert cwd.endswith("/sample_app") and not cwd.startswith(str(REPO_ROOT))  # a fresh checkout
    tracked = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "sample_app/"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert files == str(sorted(name.removeprefix("sample_app/") for name in tracked)[:2])  # no __pycache__
    assert list(build.results.build_step_outputs) == [b"", b"x" * 50 * 1024]  # "the first 50KB"
    assert build.start_time and build.finish_time >= build.start_time
    assert [s.status for s in build.steps] == [Status.SUCCESS, Status.SUCCESS]
    assert standin.build(build.id).tags == ["run-a"]


def test_failing_local_step_fails_the_build_naming_step_code_and_output(builds):
    build_id = create(builds, [python_step("print('ok')"),
                               python_step("import sys; print('schema broke'); sys.exit(3)"),
                               python_step("print('never')")])
    build = wait_build(builds, build_id)
    assert build.status == Status.FAILURE
    assert 'build step 1 "local"' in build.status_detail
    assert "non-zero status: 3" in build.status_detail and "schema broke" in build.status_detail
    assert build.steps[2].status == Status.STATUS_UNKNOWN  # later steps never ran
    assert build.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.USER_BUILD_STEP


def test_failed_build_operation_raises(builds):
    operation = builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(
        steps=[python_step("raise SystemExit(1)")]))
    with pytest.raises(exceptions.GoogleAPICallError, match="Build failed"):
        operation.result(timeout=20)


def test_non_local_image_without_outcome_fails_saying_why(builds):
    build_id = create(builds, [cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["push", "x"])],
                      tags=["run-nooutcome"])
    build = wait_build(builds, build_id)
    assert build.status == Status.FAILURE
    assert build.status_detail == (
        "stand-in cannot run image gcr.io/cloud-builders/docker; no outcome set for this build")


def test_outcome_rules_match_tags(builds, standin):
    standin.set_outcome(kind="build", match="run-rel1.push", outcome="SUCCESS")
    standin.set_outcome(kind="build", match="run-rel1.e2e", outcome="FAILURE", detail="playwright: 2 failed")
    docker = cloudbuild_v1.BuildStep(name="mcr.microsoft.com/playwright:v1.48.0-jammy", args=["npx", "playwright", "test"])
    ok = wait_build(builds, create(builds, [docker], tags=["rel-rel1", "run-rel1.push.a1"]))
    bad = wait_build(builds, create(builds, [docker], tags=["rel-rel1", "run-rel1.e2e.a1"]))
    assert ok.status == Status.SUCCESS
    assert (bad.status, bad.status_detail) == (Status.FAILURE, "playwright: 2 failed")


def test_hang_stays_working_until_cancelled(builds, standin):
    standin.set_outcome(kind="build", match="run-hang", outcome="HANG")
    build_id = create(builds, [cloudbuild_v1.BuildStep(name="postgres:16", args=["psql"])], tags=["run-hang"],
                      timeout_s=60)
    time.sleep(0.5)
    assert builds.get_build(project_id=PROJECT, id=build_id).status == Status.WORKING
    cancelled = builds.cancel_build(project_id=PROJECT, id=build_id)
    assert cancelled.status == Status.CANCELLED
    time.sleep(0.2)
    assert builds.get_build(project_id=PROJECT, id=build_id).status == Status.CANCELLED


def test_list_builds_filters_by_tag_and_status(builds):
    first = create(builds, [python_step("pass")], tags=["rel-list1", "run-list1.lint.a1"])
    second = create(builds, [python_step("raise SystemExit(2)")], tags=["rel-list1", "run-list1.unit.a1"])
    create(builds, [python_step("pass")], tags=["rel-other"])
    for build_id in (first, second):
        wait_build(builds, build_id)
    tagged = list(builds.list_builds(project_id=PROJECT, filter='tags="rel-list1"'))
    assert [b.id for b in tagged] == [second, first]  # newest first
    failed = list(builds.list_builds(project_id=PROJECT, filter='tags="rel-list1" AND status="FAILURE"'))
    assert [b.id for b in failed] == [second]
    with pytest.raises(exceptions.InvalidArgument):
        list(builds.list_builds(project_id=PROJECT, filter='images="x"'))


def test_fail_next_surfaces_as_api_core_exceptions(builds, standin):
    standin.fail_next(method="CreateBuild", code=grpc.StatusCode.PERMISSION_DENIED, times=1,
                      message="Permission 'cloudbuild.builds.create' denied on resource 'projects/local-project'")
    with pytest.raises(exceptions.PermissionDenied, match="cloudbuild.builds.create"):
        create(builds, [python_step("pass")])
    standin.fail_next(method="CreateBuild", code=grpc.StatusCode.UNAVAILABLE, times=1)
    with pytest.raises(exceptions.ServiceUnavailable):  # CreateBuild is not retried by the client
        create(builds, [python_step("pass")])
    build_id = create(builds, [python_step("pass")])  # the fault is used up
    standin.fail_next(method="GetBuild", code=grpc.StatusCode.UNAVAILABLE, times=2)
    assert builds.get_build(project_id=PROJECT, id=build_id).id == build_id  # the client's retry absorbs it


def test_unknown_build_is_not_found(builds):
    with pytest.raises(exceptions.NotFound):
        builds.get_build(project_id=PROJECT, id="no-such-build")


def test_get_iam_policy_returns_what_was_set(settings, standin):
    standin.set_iam_policy({"roles/cloudbuild.builds.editor": ["serviceAccount:ci@local-project.iam.gserviceaccount.com"],
                            "roles/run.developer": ["user:dev@example.com", "group:ops@example.com"]})
    policy = gcp_clients.projects(settings).get_iam_policy(resource=f"projects/{PROJECT}")
    assert {b.role: list(b.members) for b in policy.bindings} == {
        "roles/cloudbuild.builds.editor": ["serviceAccount:ci@local-project.iam.gserviceaccount.com"],
        "roles/run.developer": ["user:dev@example.com", "group:ops@example.com"],
    }
    standin.fail_next(method="GetIamPolicy", code=grpc.StatusCode.PERMISSION_DENIED, times=1,
                      message="Permission 'resourcemanager.projects.getIamPolicy' denied")
    with pytest.raises(exceptions.PermissionDenied):
        gcp_clients.projects(settings).get_iam_policy(resource=f"projects/{PROJECT}")
