"""The preflight check and stage executor, driving the real Resource Manager v3 client
over gRPC against the local stand-in's GetIamPolicy."""
from __future__ import annotations

from types import MappingProxyType

import grpc
import pytest

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.domain.commands import StartStage
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ExecutorError, TransientError
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller, RetryPolicy
from shared.adapters.executors.preflight import PreflightExecutor
from shared.domain.pipeline import Stage, StageKind, load_pipeline
from shared.domain.preflight import check_permissions
from tests.conftest import LOGS
from tests.seed import REQUIRED_ROLES

PROJECT = "acme-release"
SA = f"release-pipeline@{PROJECT}.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = StandIn(StandInConfig(project=PROJECT, region="europe-west3",
                                   workspace=tmp_path_factory.mktemp("standin-ws"), local_images=frozenset(),
                                   pubsub_emulator_host=None, log_dir=LOGS / "standin-preflight"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, iam_endpoint=standin.endpoint, cloud_run_endpoint=standin.endpoint)


@pytest.fixture(scope="module")
def pipeline():
    return load_pipeline(REPO_ROOT / "pipelines" / "noesis2.yaml")


def preflight_stage(service_account: str = "release-pipeline") -> Stage:
    return Stage(id="preflight", number="0", name="Permission check", kind=StageKind("preflight"),
                 environment="build", gate="no release with missing roles", timeout_s=60, optional=False,
                 params=MappingProxyType({"service_account": service_account}))


def command() -> StartStage:
    return StartStage(release_id="rel-1", stage="preflight", stage_run_id="rel-1-preflight-1", attempt=1,
                      kind="preflight")


def complete_policy(extra: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    bindings = {role: [MEMBER, "user:ops@example.com"] for role in REQUIRED_ROLES}
    bindings["roles/viewer"] = ["user:ops@example.com"]  # someone else's role: not ours
    bindings.update(extra or {})
    return bindings


def test_complete_policy_passes(standin, settings, pipeline):
    standin.set_iam_policy(complete_policy())
    result = PreflightExecutor(settings).start(pipeline, preflight_stage(), command())
    assert result.finished is not None
    assert result.finished.outcome is Outcome.SUCCEEDED
    assert result.finished.result["warnings"] == []
    assert result.finished.result["checked_roles"] == sorted(REQUIRED_ROLES)
    assert result.handle == {"service_account": SA}


def test_missing_role_fails_naming_it(standin, settings, pipeline):
    bindings = complete_policy()
    bindings["roles/redis.admin"] = ["user:ops@example.com"]  # the pipeline account lost it
    standin.set_iam_policy(bindings)
    result = PreflightExecutor(settings).start(pipeline, preflight_stage(), command())
    assert result.finished.outcome is Outcome.FAILED
    assert result.finished.reason == f"missing role roles/redis.admin for {SA}"
    assert result.finished.result["missing_roles"] == ["roles/redis.admin"]


def test_extra_role_passes_with_a_warning(standin, settings, pipeline):
    standin.set_iam_policy(complete_policy({"roles/owner": [MEMBER]}))
    result = PreflightExecutor(settings).start(pipeline, preflight_stage(SA), command())
    assert result.finished.outcome is Outcome.SUCCEEDED
    assert result.finished.result["warnings"] == ["roles/owner"]
    assert "extra role roles/owner" in result.finished.result["report"]


def test_check_permissions_reads_the_actual_policy(standin, settings, pipeline):
    standin.set_iam_policy({})
    report = check_permissions(gcp_clients.projects(settings), PROJECT, SA, pipeline)
    assert not report.ok and report.missing == sorted(REQUIRED_ROLES)
    standin.set_iam_policy(complete_policy())
    assert check_permissions(gcp_clients.projects(settings), PROJECT, SA, pipeline).ok


def test_poll_has_nothing_to_observe(settings, pipeline):
    assert PreflightExecutor(settings).poll(pipeline, preflight_stage(), None) is None


def test_unavailable_iam_is_transient_and_denied_is_permanent(standin, settings, pipeline):
    standin.set_iam_policy(complete_policy())
    one_try = ApiCaller(RetryPolicy(initial_s=0.01, maximum_s=0.01, timeout_s=0.0, call_timeout_s=5))
    executor = PreflightExecutor(settings, caller=one_try)
    standin.fail_next("GetIamPolicy", grpc.StatusCode.UNAVAILABLE, times=1)
    with pytest.raises(TransientError, match="read IAM policy of project acme-release"):
        executor.start(pipeline, preflight_stage(), command())
    standin.fail_next("GetIamPolicy", grpc.StatusCode.PERMISSION_DENIED,
                      message="Permission 'resourcemanager.projects.getIamPolicy' denied")
    with pytest.raises(ExecutorError, match="missing permission resourcemanager.projects.getIamPolicy"):
        executor.start(pipeline, preflight_stage(), command())
    # Faults used up: the same executor works again.
    assert executor.start(pipeline, preflight_stage(), command()).finished.outcome is Outcome.SUCCEEDED


def test_shipped_preflight_stage_checks_the_account_the_deploy_creates(standin, settings, pipeline):
    from deploy.config import load_config
    from deploy.model import build_plan, sa_member

    config = load_config({"RELEASE_PROJECT": PROJECT, "DEPLOY_GITHUB_REPOSITORY": "acme/noesis2"})
    plan = build_plan(config)
    deployed = {b.role for b in plan.bindings if b.member == sa_member(config.pipeline_sa)
                and b.scope in ("project", "secret")}
    # The stand-in holds one project policy: grant the deployed roles there.
    standin.set_iam_policy({role: [sa_member(config.pipeline_sa)] for role in deployed})
    stage = pipeline.stage("preflight")  # service_account: noesis2-pipeline@${project}...
    result = PreflightExecutor(settings).start(pipeline, stage, command())
    assert result.handle == {"service_account": config.pipeline_sa}
    assert result.finished.outcome is Outcome.SUCCEEDED, result.finished.reason
    assert result.finished.result["warnings"] == []
