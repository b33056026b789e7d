"""The stand-in through the real Cloud Run v2 clients: jobs, executions, services, traffic."""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections import Counter

import pytest
from google.api_core import exceptions
from google.cloud import run_v2

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings

PROJECT, REGION = "local-project", "europe-west3"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
State = run_v2.Condition.State
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT, local_images=frozenset({"local"}),
                        log_dir=tmp_path_factory.mktemp("standin-logs"))
    with StandIn(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint)


def env(**values: str) -> list[run_v2.EnvVar]:
    return [run_v2.EnvVar(name=k, value=v) for k, v in values.items()]


def make_job(settings, job_id: str, image: str, command: list[str], **container_env: str) -> str:
    container = run_v2.Container(image=image, command=command, env=env(**container_env))
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    return gcp_clients.run_jobs(settings).create_job(parent=PARENT, job=job, job_id=job_id).result(10).name


def run(settings, job_name: str, stage_run_id: str, args: list[str] | None = None, **extra_env: str):
    override = run_v2.RunJobRequest.Overrides.ContainerOverride(
        args=args or [], env=env(STAGE_RUN_ID=stage_run_id, **extra_env))
    request = run_v2.RunJobRequest(name=job_name, overrides=run_v2.RunJobRequest.Overrides(
        container_overrides=[override]))
    return gcp_clients.run_jobs(settings).run_job(request=request)


def completed(execution: run_v2.Execution) -> run_v2.Condition:
    return next(c for c in execution.conditions if c.type_ == "Completed")


def test_run_job_runs_the_container_with_overrides(settings, standin, tmp_path):
    job = make_job(settings, "migrate", "local", [sys.executable, "-m", "sample_app.migrate"],
                   DATA_DIR=str(tmp_path / "data"))
    operation = run(settings, job, "rel1.staging-migrate.a1")
    assert operation.metadata.name.startswith(job + "/executions/migrate-")
    execution = operation.result(timeout=30)
    polled = gcp_clients.run_jobs(settings).get_operation({"name": operation.operation.name})
    assert polled.done and not polled.HasField("error")  # the run_v2 operations mixin sees the same LRO
    assert (tmp_path / "data" / "app.sqlite3").is_file()
    fetched = gcp_clients.run_executions(settings).get_execution(name=execution.name)
    assert fetched.succeeded_count == 1 and fetched.failed_count == 0
    assert fetched.completion_time and fetched.start_time
    assert completed(fetched).state == State.CONDITION_SUCCEEDED
    container_env = {e.name: e.value for e in fetched.template.containers[0].env}
    assert container_env == {"DATA_DIR": str(tmp_path / "data"), "STAGE_RUN_ID": "rel1.staging-migrate.a1"}


def test_failing_job_and_finding_the_execution_by_stage_run_id(settings, tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE broken (;")
    job = make_job(settings, "migrate-bad", "local", [sys.executable, "-m", "sample_app.migrate"],
                   DATA_DIR=str(tmp_path / "d"))
    run(settings, job, "rel2.staging-migrate.a1", args=[str(bad)])
    run(settings, job, "rel2.staging-migrate.a2")
    executions = gcp_clients.run_executions(settings)

    def find(stage_run_id: str) -> run_v2.Execution:
        import time
        for _ in range(200):
            for item in executions.list_executions(parent=job):
                values = {e.name: e.value for c in item.template.containers for e in c.env}
                if values.get("STAGE_RUN_ID") == stage_run_id and item.completion_time:
                    return item
            time.sleep(0.05)
        raise AssertionError(f"no finished execution carries STAGE_RUN_ID={stage_run_id}")

    failed, passed = find("rel2.staging-migrate.a1"), find("rel2.staging-migrate.a2")
    assert failed.failed_count == 1 and completed(failed).state == State.CONDITION_FAILED
    assert "exit code 1" in completed(failed).message and "failed" in completed(failed).message
    assert completed(failed).execution_reason == run_v2.Condition.ExecutionReason.NON_ZERO_EXIT_CODE
    assert list(failed.template.containers[0].args) == [str(bad)]
    assert passed.succeeded_count == 1


def test_non_local_job_follows_outcome_or_fails_saying_why(settings, standin):
    job = make_job(settings, "ingestion-smoke", "europe-west3-docker.pkg.dev/p/noesis2:v1", ["python"])
    with pytest.raises(exceptions.GoogleAPICallError, match="stand-in cannot run image"):
        run(settings, job, "rel3.ingestion-smoke.a1").result(timeout=10)
    standin.set_outcome(kind="job", match="rel3.ingestion-smoke.a2", outcome="SUCCESS")
    execution = run(settings, job, "rel3.ingestion-smoke.a2").result(timeout=10)
    assert completed(execution).state == State.CONDITION_SUCCEEDED
    recorded = [e for e in standin.executions if e.name == execution.name]
    assert recorded and recorded[0].job == "ingestion-smoke"


def test_run_unknown_job_is_not_found(settings):
    with pytest.raises(exceptions.NotFound):
        run(settings, f"{PARENT}/jobs/nope", "x")


def template(version: str, revision: str = "", **extra_env: str) -> run_v2.RevisionTemplate:
    return run_v2.RevisionTemplate(
        revision=revision, labels={"version": version.replace(".", "-"), "commit": "abc123"},
        containers=[run_v2.Container(image="local", env=env(VERSION=version, **extra_env))])


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_services_revisions_and_a_weighted_traffic_split(settings, standin):
    services = gcp_clients.run_services(settings)
    created = services.create_service(parent=PARENT, service=run_v2.Service(template=template("1.0.0")),
                                      service_id="web").result(timeout=30)
    first = created.latest_ready_revision.rsplit("/", 1)[-1]
    assert first.startswith("web-00001-") and len(first) == len("web-00001-abc")
    assert get(created.uri + "/") == (200, {"version": "1.0.0", "revision": first})

    service = services.get_service(name=created.name)
    service.template = template("1.1.0", revision="web-canary")
    service.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=first, percent=90),
                       run_v2.TrafficTarget(type_=REVISION, revision="web-canary", percent=10, tag="canary")]
    updated = services.update_service(service=service).result(timeout=30)
    assert updated.latest_ready_revision.endswith("/revisions/web-canary")
    canary_status = next(s for s in updated.traffic_statuses if s.tag == "canary")
    assert canary_status.uri and canary_status.percent == 10

    seen = Counter()
    for _ in range(200):
        status, body = get(updated.uri + "/")
        seen[(status, body.get("revision"))] += 1
    assert sum(n for (status, _), n in seen.items() if status != 200) == 0
    assert 5 <= seen[(200, "web-canary")] <= 45, seen  # ~10 % of 200, binomial margin
    assert get(canary_status.uri + "/") == (200, {"version": "1.1.0", "revision": "web-canary"})

    revision = gcp_clients.run_revisions(settings).get_revision(name=updated.latest_ready_revision)
    assert dict(revision.labels) == {"version": "1-1-0", "commit": "abc123"}

    # Traffic-only update: same template, so no new revision; LATEST now takes everything.
    updated.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
    final = services.update_service(service=updated).result(timeout=30)
    revisions = list(gcp_clients.run_revisions(settings).list_revisions(parent=final.name))
    assert len(revisions) == 2
    assert all(get(final.uri + "/")[1]["revision"] == "web-canary" for _ in range(20))
    assert get(canary_status.uri + "/")[0] == 404  # the removed tag no longer serves


def test_unhealthy_revision_is_served_and_its_probe_fails(settings):
    services = gcp_clients.run_services(settings)
    service = services.create_service(parent=PARENT, service=run_v2.Service(
        template=template("2.0.0", FAIL_HEALTH="1")), service_id="sick").result(timeout=30)
    assert get(service.uri + "/health/liveliness")[0] == 500
    assert get(service.uri + "/")[0] == 200


def test_revision_that_does_not_answer_is_served_as_503(settings):
    dead = run_v2.RevisionTemplate(containers=[run_v2.Container(
        image="local", command=[sys.executable, "-c", "raise SystemExit(1)"])])
    service = gcp_clients.run_services(settings).create_service(
        parent=PARENT, service=run_v2.Service(template=dead), service_id="dead").result(timeout=30)
    status, body = get(service.uri + "/health/liveliness")
    assert status == 503 and "not answering" in body["error"]


def test_invalid_traffic_is_rejected(settings):
    services = gcp_clients.run_services(settings)
    with pytest.raises(exceptions.InvalidArgument, match="add up to 100"):
        services.create_service(parent=PARENT, service=run_v2.Service(
            template=template("1"), traffic=[run_v2.TrafficTarget(type_=LATEST, percent=50)]), service_id="bad")


def test_non_local_service_without_outcome_fails(settings):
    services = gcp_clients.run_services(settings)
    tmpl = run_v2.RevisionTemplate(containers=[run_v2.Container(image="europe-west3-docker.pkg.dev/p/web:v1")])
    operation = services.create_service(parent=PARENT, service=run_v2.Service(template=tmpl), service_id="remote")
    with pytest.raises(exceptions.GoogleAPICallError, match="no outcome set for service remote"):
        operation.result(timeout=10)
