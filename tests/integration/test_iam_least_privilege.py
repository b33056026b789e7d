"""Least privilege, shown: with deploy/'s bindings every stage starts; without the grant
behind a permission we use, the stage that needs it fails with PERMISSION_DENIED naming it.

The caller is the functions' runtime account, authenticated as on GCP (a service account
key through GOOGLE_APPLICATION_CREDENTIALS; the client libraries send its self-signed JWT).
Not enforced here (the emulators do not check IAM): roles/datastore.user (Firestore) and
roles/pubsub.publisher (topics); roles/logging.logWriter (build logs are files here).
"""
from __future__ import annotations

import sys

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import run_v2

from deploy.config import DeployConfig
from deploy.iam_policy import policies
from deploy.model import build_plan
from local.standin.identity import mint_key
from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors import RetryPolicy, build_executors
from shared.app.config import REPO_ROOT, Settings
from shared.domain.commands import StartStage
from shared.domain.errors import ExecutorError
from shared.domain.pipeline import parse_pipeline

PROJECT, REGION, NUMBER = "local-project", "europe-west3", "123456789012"
RUNTIME = f"release-runtime@{PROJECT}.iam.gserviceaccount.com"
PIPELINE_SA = f"pipeline@{PROJECT}.iam.gserviceaccount.com"
APP_SA = f"app@{PROJECT}.iam.gserviceaccount.com"  # the dedicated account deploy/ requires for the services
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/app/app:v1.0.0-abc1234"
WRITE_IMAGE = f"import os; open(os.environ['STANDIN_DOCKER_IMAGES'], 'a').write({IMAGE!r} + '\\n')"
PIPELINE = parse_pipeline({"name": "app", "image": "app", "stages": [
    {"id": "preflight", "kind": "preflight", "timeout": "1m", "params": {"service_account": PIPELINE_SA}},
    {"id": "unit", "kind": "build", "timeout": "1m",
     "params": {"steps": [{"name": "local", "entrypoint": sys.executable, "args": ["-c", "pass"]}]}},
    {"id": "image", "kind": "build", "timeout": "1m", "params": {
        "steps": [{"name": "local", "entrypoint": sys.executable, "args": ["-c", WRITE_IMAGE]}], "images": [IMAGE]}},
    {"id": "migrate", "kind": "job", "timeout": "1m", "params": {"job": "migrate"}},
    {"id": "deploy", "kind": "deploy", "timeout": "1m", "params": {"services": ["web"], "traffic_percent": 100}},
]})


def deploy_policies():
    settings = Settings(project=PROJECT, region=REGION)
    config = DeployConfig(settings=settings, pipeline=PIPELINE, github_repository="acme/app",
                          project_number=NUMBER, pipeline_sa_id="pipeline", app_service_account_list=(APP_SA,))
    return policies(build_plan(config))


@pytest.fixture
def standin(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(mint_key(keys, RUNTIME)))
    cfg = StandInConfig(project=PROJECT, region=REGION, project_number=NUMBER, workspace=REPO_ROOT,
                        local_images=frozenset({"local"}), log_dir=tmp_path / "logs", key_dir=keys)
    with StandIn(cfg) as running:
        settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=running.endpoint)
        parent = f"projects/{PROJECT}/locations/{REGION}"
        container = run_v2.Container(image="local", command=[sys.executable, "-c", "pass"])
        gcp_clients.run_jobs(settings).create_job(parent=parent, job_id="migrate", job=run_v2.Job(
            template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))).result(30)
        gcp_clients.run_services(settings).create_service(parent=parent, service_id="web", service=run_v2.Service(
            template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="local")],
                                             service_account=APP_SA))).result(60)
        found = deploy_policies()
        running.set_iam_policy(found.project)
        running.enforce_iam(found.accounts, found.custom_roles)  # from here on, as the runtime account
        yield running


def executors(standin):
    settings = Settings(project=PROJECT, region=REGION, cloud_build_endpoint=standin.endpoint,
                        cloud_run_endpoint=standin.endpoint, iam_endpoint=standin.endpoint,
                        pipeline_service_account=PIPELINE_SA)
    return build_executors(settings, retry=RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=2))


def start(standin, stage_id: str):
    stage = PIPELINE.stage(stage_id)
    command = StartStage("rel-1", stage_id, f"rel-1.{stage_id}.a1", 1, stage.kind.value,
                         {"tag": "v1.0.0-abc1234", "version": "1.0.0", "commit": "abc1234", "repo": "acme/app"})
    return executors(standin)[stage.kind.value].start(PIPELINE, stage, command)


def test_every_stage_starts_with_deploy_bindings(standin):
    assert start(standin, "preflight").finished.outcome.value == "succeeded"
    for stage in ("unit", "image"):
        handle = start(standin, stage).handle
        assert standin.finished_build(handle["build_id"]).status.name == "SUCCESS"
    assert start(standin, "migrate").handle["execution"]
    assert start(standin, "deploy").handle["revisions"][0]["service"] == "web"


# (member, role, on account or "" for the project, stage, the permission the failure names)
GRANTS = [
    (RUNTIME, "roles/cloudbuild.builds.editor", "", "unit", "cloudbuild.builds.list"),
    (RUNTIME, "roles/iam.serviceAccountUser", PIPELINE_SA, "unit", "iam.serviceAccounts.actAs"),
    (RUNTIME, "roles/run.developer", "", "migrate", "run.executions.list"),
    (RUNTIME, "roles/run.developer", "", "deploy", "run.services.get"),
    (RUNTIME, "roles/iam.serviceAccountUser", APP_SA, "deploy", "iam.serviceAccounts.actAs"),
    (RUNTIME, f"projects/{PROJECT}/roles/releasePreflightReader", "", "preflight",
     "resourcemanager.projects.getIamPolicy"),
]


@pytest.mark.parametrize("member, role, account, stage, permission", GRANTS)
def test_without_the_grant_the_stage_fails_naming_the_permission(standin, member, role, account, stage, permission):
    standin.revoke(f"serviceAccount:{member}", role, account)
    with pytest.raises(ExecutorError, match=permission.replace(".", r"\.")):
        start(standin, stage)


def test_without_artifact_registry_writer_the_build_cannot_push(standin):
    """The build pushes as its own service account (the pipeline account), not as the caller."""
    standin.revoke(f"serviceAccount:{PIPELINE_SA}", "roles/artifactregistry.writer")
    build = standin.finished_build(start(standin, "image").handle["build_id"])
    assert build.status.name == "FAILURE"
    assert "artifactregistry.repositories.uploadArtifacts" in build.status_detail


def test_a_call_without_credentials_is_unauthenticated(standin):
    channel = grpc.insecure_channel(standin.endpoint)
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport

    client = cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=channel))
    with pytest.raises(exceptions.Unauthenticated):
        client.get_build(project_id=PROJECT, id="x", retry=None)


def test_build_steps_act_as_the_builds_service_account(standin, tmp_path):
    out = tmp_path / "who"
    code = f"import json,os; open({str(out)!r},'w').write(json.load(open(os.environ['GOOGLE_APPLICATION_CREDENTIALS']))['client_email'])"
    stage_doc = {"id": "who", "kind": "build", "timeout": "1m",
                 "params": {"steps": [{"name": "local", "entrypoint": sys.executable, "args": ["-c", code]}]}}
    pipeline = parse_pipeline({"name": "app", "stages": [stage_doc]})
    stage = pipeline.stage("who")
    command = StartStage("rel-2", "who", "rel-2.who.a1", 1, "build", {"tag": "v1", "commit": "c", "repo": "acme/app"})
    handle = executors(standin)["build"].start(pipeline, stage, command).handle
    assert standin.finished_build(handle["build_id"]).status.name == "SUCCESS"
    assert out.read_text() == PIPELINE_SA


def test_deploying_a_service_needs_act_as_on_its_runtime_account(standin):
    """Through the real client: the runtime account may deploy services that run as the app's
    dedicated account (deploy/ grants actAs on it), not ones that run as another account, nor as the
    project's default compute account (deploy/ grants nothing on it)."""
    settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint)
    services = gcp_clients.run_services(settings)
    service = services.get_service(name=f"projects/{PROJECT}/locations/{REGION}/services/web")
    service.template.service_account = f"other@{PROJECT}.iam.gserviceaccount.com"
    with pytest.raises(exceptions.PermissionDenied, match="iam.serviceAccounts.actAs"):
        services.update_service(service=service)
    service.template.service_account = ""  # a service without its own account runs as the default compute one
    with pytest.raises(exceptions.PermissionDenied, match="iam.serviceAccounts.actAs"):
        services.update_service(service=service)
    service.template.service_account = APP_SA
    service.template.labels = {"version": "1-0-1"}
    assert services.update_service(service=service).result(30).latest_ready_revision


def test_preflight_checks_act_as_on_the_account_builds_run_as(standin):
    ok = start(standin, "preflight").finished
    assert ok.outcome.value == "succeeded" and ok.result["act_as_missing"] == []
    assert any("direct bindings only" in note for note in ok.result["notes"])
    standin.revoke(f"serviceAccount:{RUNTIME}", "roles/iam.serviceAccountUser", PIPELINE_SA)
    failed = start(standin, "preflight").finished
    assert failed.outcome.value == "failed"
    assert PIPELINE_SA in failed.reason and "iam.serviceAccounts.actAs" in failed.reason


def test_the_canary_analysis_reads_through_the_custom_role_only(standin):
    """deploy/ grants the runtime account a custom role with logging.logEntries.list and
    monitoring.timeSeries.list instead of the project-wide viewer roles; without it both reads fail."""
    from datetime import datetime, timezone

    from google.cloud import monitoring_v3
    from google.cloud.logging_v2.types import ListLogEntriesRequest

    settings = Settings(project=PROJECT, region=REGION, logging_endpoint=standin.endpoint,
                        monitoring_endpoint=standin.endpoint)
    logs, metrics = gcp_clients.logging_entries(settings), gcp_clients.monitoring_metrics(settings)

    def read_logs():
        return list(logs.list_log_entries(request=ListLogEntriesRequest(
            resource_names=[f"projects/{PROJECT}"], filter='resource.type = "cloud_run_revision"'), retry=None))

    def read_metrics():
        return list(metrics.list_time_series(request=monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{PROJECT}", filter='metric.type = "run.googleapis.com/request_count"',
            interval=monitoring_v3.TimeInterval(end_time=datetime.now(timezone.utc))), retry=None))

    read_logs(), read_metrics()
    found = deploy_policies()
    assert not {"roles/logging.viewer", "roles/monitoring.viewer"} & set(found.project)
    standin.revoke(f"serviceAccount:{RUNTIME}", f"projects/{PROJECT}/roles/releaseCanaryReader")
    with pytest.raises(exceptions.PermissionDenied, match=r"logging\.logEntries\.list"):
        read_logs()
    with pytest.raises(exceptions.PermissionDenied, match=r"monitoring\.timeSeries\.list"):
        read_metrics()
