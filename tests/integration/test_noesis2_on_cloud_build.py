"""The shipped noesis2 pipeline's builds, as the executor makes them, against the stand-in that
refuses what Cloud Build refuses (issue 12, findings 1-4 and 7)."""
from __future__ import annotations

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors.cloud_build import CloudBuildExecutor, build_from_params
from shared.app.config import REPO_ROOT, Settings
from shared.domain.commands import StartStage
from shared.domain.pipeline import StageKind, load_pipeline

PROJECT = "local-project"
PIPELINE = load_pipeline(REPO_ROOT / "pipelines" / "noesis2.yaml")
PIPELINE_SA = f"noesis2-pipeline@{PROJECT}.iam.gserviceaccount.com"
BUILD_STAGES = [s.id for s in PIPELINE.stages if s.kind is StageKind.BUILD]
CONNECTED = f"projects/{PROJECT}/locations/europe-west3/connections/github/repositories/acme-noesis2"
INPUTS = {"tag": "v1.4.0-abc1234", "version": "1.4.0", "commit": "abc1234def567", "repo": "acme/noesis2"}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, workspace=REPO_ROOT, log_dir=tmp_path_factory.mktemp("noesis2-builds"))
    with StandIn(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint,
                    artifact_registry=f"europe-west3-docker.pkg.dev/{PROJECT}/noesis2",
                    pipeline_service_account=PIPELINE_SA, build_region="europe-west1")


def command(stage: str, release: str = "acme-noesis2-abc1234", **inputs) -> StartStage:
    return StartStage(release, stage, f"{release}.{stage}.a1", 1, "build", INPUTS | inputs)


@pytest.mark.parametrize("stage_id", BUILD_STAGES)
def test_cloud_build_accepts_every_build_stage(standin, settings, stage_id):
    """Finding 4: main's stage 6 used ${CLOUDSQL_INSTANCE}: CreateBuild answers INVALID_ARGUMENT."""
    standin.set_outcome("build", f"run-acme-noesis2-abc1234.{stage_id}.", "FAILURE", "stand-in: not run here")
    try:
        handle = CloudBuildExecutor(settings, gcp_clients.cloud_build(settings)).start(
            PIPELINE, PIPELINE.stage(stage_id), command(stage_id)).handle
    except exceptions.InvalidArgument as exc:  # pragma: no cover - the failure being shown
        pytest.fail(f"CreateBuild refused stage {stage_id}: {exc}")
    build = standin.build(handle["build_id"])
    # Finding 1: the build runs as the pipeline account, with its logs in Cloud Logging.
    assert build.service_account == f"projects/{PROJECT}/serviceAccounts/{PIPELINE_SA}"
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
    # Finding 7: the build region is its own setting.
    assert build.name.startswith(f"projects/{PROJECT}/locations/europe-west1/builds/")


@pytest.mark.parametrize("stage_id", ["lint", "unit", "build", "e2e", "vector-schema", "chaos"])
def test_stages_that_read_the_repository_fetch_the_pushed_commit(settings, stage_id):
    """Finding 2: without ``source`` /workspace is empty. Issue 23: noesis2 is private, so through
    its connected repository, not an anonymous gitSource."""
    build = build_from_params(settings, PIPELINE, PIPELINE.stage(stage_id), command(stage_id))
    assert build.source.connected_repository.repository == CONNECTED
    assert build.source.connected_repository.revision == "abc1234def567"
    assert not build.source.git_source.url


def test_the_image_is_pushed_by_the_build_that_built_it_and_stage_4_finds_it(standin, settings):
    """Finding 3: a `docker push` in a new build finds an empty Docker cache and fails."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    standin.connect_repository(CONNECTED, str(REPO_ROOT))  # this checkout plays the private GitHub repository
    local = settings
    standin.set_outcome("build", "run-acme-noesis2-push3.build.", "SUCCESS")
    standin.set_outcome("build", "run-acme-noesis2-push3.push.", "SUCCESS")
    executor = CloudBuildExecutor(local, gcp_clients.cloud_build(local))
    start = executor.start(PIPELINE, PIPELINE.stage("build"), command("build", "acme-noesis2-push3", commit=head))
    built = standin.finished_build(start.handle["build_id"])
    assert built.status.name == "SUCCESS", built.status_detail
    assert [i.name for i in built.results.images] == [f"{settings.artifact_registry}/noesis2:v1.4.0-abc1234"]
    pushed = standin.finished_build(executor.start(PIPELINE, PIPELINE.stage("push"), command(
        "push", "acme-noesis2-push3", commit=head)).handle["build_id"])
    assert pushed.status.name == "SUCCESS", pushed.status_detail


def test_the_schema_step_runs_proxy_and_psql_together_and_ends(settings):
    """Finding 4: main's proxy was a background step that never exits; psql in another container."""
    build = build_from_params(settings, PIPELINE, PIPELINE.stage("vector-schema"), command("vector-schema"))
    proxy_steps = [s for s in build.steps if "cloud-sql-proxy" in " ".join([s.name, *s.args])
                   and "--port=5432" in " ".join(s.args)]
    assert len(proxy_steps) == 1 and "psql" in proxy_steps[0].args[-1] and "kill" in proxy_steps[0].args[-1]
    assert not any(list(s.wait_for) == ["-"] for s in build.steps)
