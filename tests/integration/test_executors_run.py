"""Cloud Run job, deploy, traffic, check executors, rollback and the sweeper, through the
real run_v2 clients against the local stand-in."""
from __future__ import annotations

import sys
import time
import uuid

import grpc
import pytest
import requests

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.domain.commands import StartStage
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors import RetryPolicy, build_executors, rollback
from shared.adapters.http_prober import RequestsProber
from shared.app.ports import SystemClock
from shared.app.probing import ProbeService
from shared.testing.fakes import FakeClock, FakeProbeScheduler, FakePublisher, FakeStore
from shared.testing.probe_runner import run_stage
from shared.adapters.executors.traffic import revision_name
from shared.domain.pipeline import load_pipeline, parse_pipeline, thaw
from shared.domain.state import StageState, StageStatus, new_release
from shared.app.sweeper import sweep
from shared.domain.wake import SAFETY_NET_S, next_wake

PROJECT = "local-project"
REGION = "europe-west3"
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)
LOCAL_REGISTRY = "reg.local"  # images under it run as real processes in the stand-in


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT,
                        local_images=frozenset({"local", f"{LOCAL_REGISTRY}/noesis2"}),
                        log_dir=tmp_path_factory.mktemp("standin-run-logs"))
    with StandIn(cfg) as running:
        running.set_outcome("service", "noesis2-", "SUCCESS")  # non-local revisions become ready
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_build_endpoint=standin.endpoint,
                    cloud_run_endpoint=standin.endpoint,
                    artifact_registry="europe-west3-docker.pkg.dev/local-project/noesis2")


@pytest.fixture(scope="module")
def executors(settings):
    return build_executors(settings, retry=FAST)


@pytest.fixture(scope="module")
def pipeline(settings):
    """The shipped noesis2 flow, with its prod smoke's 5-minute bake cut to one second."""
    document = thaw(load_pipeline(settings.pipeline_file).document)
    for stage in document["stages"]:
        if stage["params"].get("bake"):
            stage["params"]["bake"] = "1s"
    return parse_pipeline(document)


@pytest.fixture(scope="module")
def jobs_client(settings):
    return gcp_clients.run_jobs(settings)


def create_job(jobs_client, job_id: str, image: str, command: list[str] | None = None) -> None:
    from google.cloud import run_v2

    container = run_v2.Container(image=image, command=command or [])
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    jobs_client.create_job(parent=f"projects/{PROJECT}/locations/{REGION}", job=job, job_id=job_id).result(5)


@pytest.fixture(scope="module", autouse=True)
def jobs(standin, jobs_client):
    image = "europe-west3-docker.pkg.dev/local-project/noesis2/noesis2:latest"
    # Cloud Run refuses a job or revision naming an image the registry does not hold: push the
    # tags these tests deploy (pushed without a tree, so they follow the outcome rules).
    for tag in ("latest", "v1.0.0-abc1234", "v1.2.3-abc1234", "v2.0.0-aaaaaaa", "v2.1.0-bbbbbbb"):
        standin.push_image(image.replace(":latest", f":{tag}"))
    for job_id in ("noesis2-migrate", "noesis2-migrate-prod", "noesis2-ingestion-smoke"):
        create_job(jobs_client, job_id, image)


def run_check(settings, executors, pipeline, command):
    """A check as production runs it: started, then probed at its scheduled times (in-process)."""
    service = ProbeService(FakeStore(), executors, FakePublisher(), FakeProbeScheduler(), RequestsProber(),
                           SystemClock(), settings)
    return run_stage(service, service.scheduler, executors["check"], pipeline, command)


def new_command(stage: str, kind: str, tag: str = "v1.0.0-abc1234", commit: str | None = None) -> StartStage:
    release = f"acme-noesis2-{uuid.uuid4().hex[:12]}"
    commit = commit or uuid.uuid4().hex + "abcdefgh"
    version = tag[1:].rsplit("-", 1)[0] if tag else ""
    return StartStage(release, stage, f"{release}.{stage}.a1", 1, kind,
                      {"tag": tag, "version": version, "commit": commit, "repo": "acme/noesis2"})


def running(cmd: StartStage, handle) -> StageState:
    return StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=cmd.stage_run_id,
                      result={"stage_run_id": cmd.stage_run_id, **dict(handle)})


def wait_finish(executor, pipeline, cmd, handle, timeout_s: float = 15):
    state = running(cmd, handle)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finish = executor.poll(pipeline, pipeline.stage(cmd.stage), state)
        if finish is not None:
            return finish
        time.sleep(0.05)
    raise AssertionError(f"{cmd.stage_run_id} did not finish in {timeout_s}s")


def executions_of(standin, cmd) -> list:
    return [e for e in standin.executions
            if any(env.name == "STAGE_RUN_ID" and env.value == cmd.stage_run_id
                   for c in e.template.containers for env in c.env)]


# -- jobs ------------------------------------------------------------------------------------
def test_job_succeeds_with_args_and_ids_in_the_execution(standin, executors, pipeline):
    cmd = new_command("staging-migrate", "job")
    standin.set_outcome("job", cmd.stage_run_id, "SUCCESS")
    started = executors["job"].start(pipeline, pipeline.stage("staging-migrate"), cmd)
    (execution,) = executions_of(standin, cmd)
    assert started.handle["execution"] == execution.name
    assert execution.name.startswith(f"projects/{PROJECT}/locations/{REGION}/jobs/noesis2-migrate/executions/")
    container = execution.template.containers[0]
    assert list(container.args) == ["python", "manage.py", "migrate_schemas", "--noinput"]
    env = {e.name: e.value for e in container.env}
    assert env["RELEASE_ID"] == cmd.release_id and env["RELEASE_TAG"] == "v1.0.0-abc1234"
    finish = wait_finish(executors["job"], pipeline, cmd, started.handle)
    assert finish.outcome is Outcome.SUCCEEDED and finish.result["succeeded_count"] == 1


def test_job_failure_carries_the_condition_message(standin, executors, pipeline):
    cmd = new_command("ingestion-smoke", "job")
    standin.set_outcome("job", cmd.stage_run_id, "FAILURE", "embeddings missing for 3 documents")
    started = executors["job"].start(pipeline, pipeline.stage("ingestion-smoke"), cmd)
    finish = wait_finish(executors["job"], pipeline, cmd, started.handle)
    assert finish.outcome is Outcome.FAILED and finish.result["failed_count"] == 1
    assert "embeddings missing for 3 documents" in finish.reason


def test_a_local_job_really_sees_its_stage_run_id(standin, settings, executors, jobs_client):
    create_job(jobs_client, "local-env-check", "local", [sys.executable])
    check = "import os, sys; sys.exit(0 if os.environ['STAGE_RUN_ID'].endswith('.probe.a1') else 4)"
    local = parse_pipeline({"name": "noesis2", "stages": [
        {"id": "probe", "kind": "job", "timeout": "1m", "params": {"job": "local-env-check", "args": ["-c", check]}},
        {"id": "broken", "kind": "job", "timeout": "1m", "params": {"job": "local-env-check",
                                                                    "args": ["-c", "raise SystemExit(3)"]}},
    ]})
    for stage, expected in (("probe", Outcome.SUCCEEDED), ("broken", Outcome.FAILED)):
        cmd = new_command(stage, "job")
        started = executors["job"].start(local, local.stage(stage), cmd)
        finish = wait_finish(executors["job"], local, cmd, started.handle)
        assert finish.outcome is expected, finish.reason
    assert "exit code 3" in finish.reason


def test_secrets_travel_as_references_and_a_repeated_start_reuses_the_execution(standin, executors, pipeline):
    cmd = new_command("prod-migrate", "job")
    standin.set_outcome("job", cmd.stage_run_id, "HANG")
    first = executors["job"].start(pipeline, pipeline.stage("prod-migrate"), cmd)
    again = executors["job"].start(pipeline, pipeline.stage("prod-migrate"), cmd)
    assert again.handle == {"execution": first.handle["execution"], "reused": True}
    (execution,) = executions_of(standin, cmd)
    (secret,) = [e for e in execution.template.containers[0].env if e.name == "DATABASE_URL"]
    assert not secret.value
    assert (secret.value_source.secret_key_ref.secret, secret.value_source.secret_key_ref.version) == (
        "noesis2-prod-database-url", "latest")
    # a hanging job is still running as far as poll can tell
    assert executors["job"].poll(pipeline, pipeline.stage("prod-migrate"), running(cmd, first.handle)) is None


def test_unknown_job_is_a_permanent_error_naming_it(executors, pipeline):
    local = parse_pipeline({"name": "noesis2", "stages": [
        {"id": "ghost", "kind": "job", "timeout": "1m", "params": {"job": "no-such-job"}}]})
    with pytest.raises(ExecutorError, match="no-such-job"):
        executors["job"].start(local, local.stage("ghost"), new_command("ghost", "job"))


def test_run_job_unavailable_is_retried_and_permission_denied_names_the_permission(standin, executors, pipeline):
    cmd = new_command("staging-migrate", "job")
    standin.set_outcome("job", cmd.stage_run_id, "SUCCESS")
    standin.fail_next("RunJob", grpc.StatusCode.UNAVAILABLE, times=2)
    executors["job"].start(pipeline, pipeline.stage("staging-migrate"), cmd)
    assert len(executions_of(standin, cmd)) == 1
    cmd = new_command("staging-migrate", "job")
    standin.fail_next("RunJob", grpc.StatusCode.PERMISSION_DENIED,
                      message="Permission 'run.jobs.run' denied on resource 'noesis2-migrate'.")
    with pytest.raises(ExecutorError, match=r"stage staging-migrate: .*missing permission run\.jobs\.run"):
        executors["job"].start(pipeline, pipeline.stage("staging-migrate"), cmd)


# -- sweeper with real executors --------------------------------------------------------------
def test_sweeper_reports_a_hanging_job_as_running_and_ticks_after_its_deadline(standin, settings, executors,
                                                                                 pipeline):
    store, clock, publisher = FakeStore(), FakeClock(), FakePublisher()
    store.save_pipeline(pipeline)
    releases = {}
    for outcome in ("HANG", "SUCCESS"):
        state = new_release(pipeline, repo="acme/noesis2", ref="refs/heads/main",
                            commit=uuid.uuid4().hex + "0" * 8, version="1.0.0", pushed_by="dev@x", now=clock.now())
        stage = pipeline.stage("staging-migrate")
        cmd = StartStage(state.release_id, stage.id, f"{state.release_id}.{stage.id}.a1", 1, "job",
                         {"tag": state.tag, "version": state.version, "commit": state.commit})
        standin.set_outcome("job", cmd.stage_run_id, outcome)
        handle = executors["job"].start(pipeline, stage, cmd).handle
        st = state.stages[stage.id]
        st.status, st.attempt, st.stage_run_id = StageStatus.RUNNING, 1, cmd.stage_run_id
        st.started_at, st.deadline = clock.now(), clock.now() + stage.timeout_s
        st.result = {"stage_run_id": cmd.stage_run_id, **handle}
        state.wake_at = next_wake(state, clock.now())
        store.create(state)
        releases[outcome] = state
        clock.advance(1)
    done = releases["SUCCESS"].stages["staging-migrate"]
    deadline = time.monotonic() + 10
    while executors["job"].poll(pipeline, pipeline.stage("staging-migrate"), done) is None:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    assert sweep(store, executors, publisher, clock, settings).releases == 0  # probes come first
    clock.advance(SAFETY_NET_S)  # the probes went quiet: the safety net polls
    report = sweep(store, executors, publisher, clock, settings)
    assert report.polled == 2
    (finished,) = publisher.of_type("stage.finished")
    assert finished["release_id"] == releases["SUCCESS"].release_id and finished["outcome"] == "succeeded"
    assert publisher.of_type("release.tick") == []
    clock.advance(20 * 60)
    report = sweep(store, executors, publisher, clock, settings)
    assert set(report.ticks) == {releases["HANG"].release_id, releases["SUCCESS"].release_id}
    assert releases["HANG"].release_id not in {m["release_id"] for m in publisher.of_type("stage.finished")}


# -- deploy, check, traffic, rollback ---------------------------------------------------------
def service_state(standin, service_id: str):
    return next(s for s in standin.services if s.name.endswith(f"/services/{service_id}"))


def served(service) -> dict[str, tuple[int, str]]:
    return {s.revision: (s.percent, s.tag) for s in service.traffic_statuses}


def test_staging_deploy_creates_services_with_labels_env_and_is_safe_to_repeat(standin, executors, pipeline):
    cmd = new_command("staging-deploy", "deploy", tag="v1.2.3-abc1234", commit="abc1234" + "f" * 33)
    started = executors["deploy"].start(pipeline, pipeline.stage("staging-deploy"), cmd)
    services = pipeline.stage("staging-deploy").params["services"]
    assert [t["service"] for t in started.handle["revisions"]] == list(services)
    finish = wait_finish(executors["deploy"], pipeline, cmd, started.handle)
    assert finish.outcome is Outcome.SUCCEEDED and set(finish.result["urls"]) == set(services)
    web = service_state(standin, "noesis2-web-staging")
    revision = revision_name("noesis2-web-staging", cmd.stage_run_id)
    assert served(web) == {revision: (100, "")}
    assert web.template.containers[0].image == (
        "europe-west3-docker.pkg.dev/local-project/noesis2/noesis2:v1.2.3-abc1234")
    assert dict(web.template.labels) == {"version": "1-2-3", "commit": "abc1234"}
    env = {e.name: e.value for e in web.template.containers[0].env}
    assert env == {"DJANGO_SETTINGS_MODULE": "noesis2.settings.staging", "RELEASE_TAG": "v1.2.3-abc1234"}
    count = len(standin.revisions)
    again = executors["deploy"].start(pipeline, pipeline.stage("staging-deploy"), cmd)
    assert len(standin.revisions) == count and all(t.get("reused") for t in again.handle["revisions"])
    assert wait_finish(executors["deploy"], pipeline, cmd, again.handle).outcome is Outcome.SUCCEEDED


def test_deploy_without_a_tag_is_refused(executors, pipeline):
    with pytest.raises(ExecutorError, match="deploy without a tag is refused"):
        executors["deploy"].start(pipeline, pipeline.stage("prod-deploy"), new_command("prod-deploy", "deploy", tag=""))


def test_a_revision_that_fails_fails_the_deploy_with_its_message(standin, executors, pipeline):
    cmd = new_command("staging-deploy", "deploy")
    broken = revision_name("noesis2-worker-staging", cmd.stage_run_id)
    standin.set_outcome("service", broken, "FAILURE", "Container failed to start on port 8080")
    started = executors["deploy"].start(pipeline, pipeline.stage("staging-deploy"), cmd)
    finish = wait_finish(executors["deploy"], pipeline, cmd, started.handle)
    assert finish.outcome is Outcome.FAILED
    assert "noesis2-worker-staging" in finish.reason and "Container failed to start on port 8080" in finish.reason


def test_a_rollout_that_hangs_is_still_running(standin, executors, pipeline):
    cmd = new_command("prod-deploy", "deploy")
    local = parse_pipeline({"name": "noesis2", "stages": [{"id": "prod-deploy", "kind": "deploy", "timeout": "5m",
                            "params": {"services": ["noesis2-stuck"], "traffic_percent": 100}}]})
    standin.set_outcome("service", revision_name("noesis2-stuck", cmd.stage_run_id), "HANG")
    started = executors["deploy"].start(local, local.stage("prod-deploy"), cmd)
    time.sleep(0.1)
    assert executors["deploy"].poll(local, local.stage("prod-deploy"), running(cmd, started.handle)) is None


def test_canary_check_full_traffic_and_rollback(standin, settings, executors, pipeline):
    # release A reaches 100 %, then release B goes out as a 10 % canary
    a = new_command("prod-deploy", "deploy", tag="v2.0.0-aaaaaaa", commit="aaaaaaa" + "1" * 33)
    started = executors["deploy"].start(pipeline, pipeline.stage("prod-deploy"), a)
    assert wait_finish(executors["deploy"], pipeline, a, started.handle).outcome is Outcome.SUCCEEDED
    rev_a = revision_name("noesis2-web", a.stage_run_id)
    assert served(service_state(standin, "noesis2-web")) == {rev_a: (100, "canary")}  # first deploy: all of it

    b = new_command("prod-deploy", "deploy", tag="v2.1.0-bbbbbbb", commit="bbbbbbb" + "2" * 33)
    started = executors["deploy"].start(pipeline, pipeline.stage("prod-deploy"), b)
    assert wait_finish(executors["deploy"], pipeline, b, started.handle).outcome is Outcome.SUCCEEDED
    rev_b = revision_name("noesis2-web", b.stage_run_id)
    web = service_state(standin, "noesis2-web")
    assert served(web) == {rev_b: (10, "canary"), rev_a: (90, "")}

    # the prod smoke talks to the canary's own URL
    smoke = StartStage(b.release_id, "prod-smoke", f"{b.release_id}.prod-smoke.a1", 1, "check", b.inputs)
    checked = run_check(settings, executors, pipeline, smoke)
    assert checked["outcome"] == "succeeded", checked["reason"]
    canary_url = next(s.uri for s in web.traffic_statuses if s.tag == "canary")
    assert checked["result"]["url"] == canary_url != web.uri
    assert checked["result"]["bake"]["rounds"] >= 1 and not checked["result"]["bake"]["failed"]
    assert requests.get(canary_url + "/", timeout=5).headers["X-Serving-Revision"] == rev_b

    # traffic 100 %: B takes everything and keeps its tag; repeating changes nothing
    full = StartStage(b.release_id, "traffic-100", f"{b.release_id}.traffic-100.a1", 1, "traffic", b.inputs)
    moved = executors["traffic"].start(pipeline, pipeline.stage("traffic-100"), full)
    assert moved.handle["revisions"][0]["revision"] == rev_b
    assert wait_finish(executors["traffic"], pipeline, full, moved.handle).outcome is Outcome.SUCCEEDED
    assert served(service_state(standin, "noesis2-web")) == {rev_b: (100, "canary")}
    assert executors["traffic"].start(pipeline, pipeline.stage("traffic-100"), full).handle["revisions"][0]["reused"]

    # rollback: back to the newest revision that completed a release other than the one serving, i.e. A
    from shared.domain.revision_history import RevisionRecord, ServiceHistory, Verdict

    history = ServiceHistory("noesis2-web")
    for revision in (rev_a, rev_b):
        history = history.with_revision(RevisionRecord(revision)).with_verdict(revision, Verdict.COMPLETED)
    done = rollback(settings, "noesis2-web", history=history, reason="test")
    assert (done["revision"], done["version"], done["commit"], done["from"]) == (rev_a, "2-0-0", "aaaaaaa", rev_b)
    assert (done["before"], done["after"]) == ([{"revision": rev_b, "percent": 100}],
                                               [{"revision": rev_a, "percent": 100}])
    assert served(service_state(standin, "noesis2-web")) == {rev_a: (100, "")}
    assert rollback(settings, "noesis2-web", to_revision=rev_b, history=history)["revision"] == rev_b
    assert served(service_state(standin, "noesis2-web")) == {rev_b: (100, "")}


def test_deploy_retries_unavailable_and_names_a_missing_permission(standin, executors, pipeline):
    cmd = new_command("staging-deploy", "deploy")
    standin.fail_next("UpdateService", grpc.StatusCode.UNAVAILABLE, times=2)
    started = executors["deploy"].start(pipeline, pipeline.stage("staging-deploy"), cmd)
    assert wait_finish(executors["deploy"], pipeline, cmd, started.handle).outcome is Outcome.SUCCEEDED
    # the handle got lost: poll finds the revisions by their names
    assert wait_finish(executors["deploy"], pipeline, cmd, {}).outcome is Outcome.SUCCEEDED
    standin.fail_next("GetService", grpc.StatusCode.PERMISSION_DENIED,
                      message="Permission 'run.services.get' denied on resource 'noesis2-web' (or it may not exist).")
    with pytest.raises(ExecutorError, match=r"stage prod-deploy: .*missing permission run\.services\.get"):
        executors["deploy"].start(pipeline, pipeline.stage("prod-deploy"), new_command("prod-deploy", "deploy"))


def test_traffic_without_a_deployed_revision_fails_clearly(executors, pipeline):
    cmd = new_command("traffic-100", "traffic", commit="ccccccc" + "3" * 33)
    with pytest.raises(ExecutorError, match="no revision of noesis2-web carries commit ccccccc"):
        executors["traffic"].start(pipeline, pipeline.stage("traffic-100"), cmd)


def test_staging_check_fails_on_a_real_failing_health_probe(standin, settings):
    local_settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint,
                              artifact_registry=LOCAL_REGISTRY)
    executors = build_executors(local_settings, retry=FAST)
    local = parse_pipeline({"name": "noesis2", "image": "noesis2", "stages": [
        {"id": "deploy", "kind": "deploy", "environment": "staging", "timeout": "5m",
         "params": {"services": ["sick-web-staging"], "traffic_percent": 100, "env": {"FAIL_HEALTH": "1"}}},
        {"id": "smoke", "kind": "check", "timeout": "5m",
         "params": {"target": "staging", "service": "sick-web-staging", "paths": ["/", "/health/liveliness"],
                    "window": "1s"}},
    ]})
    cmd = new_command("deploy", "deploy")
    started = executors["deploy"].start(local, local.stage("deploy"), cmd)
    assert wait_finish(executors["deploy"], local, cmd, started.handle).outcome is Outcome.SUCCEEDED
    smoke = StartStage(cmd.release_id, "smoke", f"{cmd.release_id}.smoke.a1", 1, "check", cmd.inputs)
    finish = run_check(local_settings, executors, local, smoke)
    assert finish["outcome"] == "failed"
    root, health = finish["result"]["checks"]
    assert (root["status"], root["attempts"]) == (200, 1)
    assert health["status"] == 500 and health["attempts"] > 1
    assert finish["reason"].startswith("GET /health/liveliness answered 500 after")


def test_check_of_a_missing_canary_tag_is_an_executor_error(standin, executors):
    local = parse_pipeline({"name": "noesis2", "stages": [
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h", "params": {"approvers": ["b@x.io"]}},
        {"id": "deploy", "kind": "deploy", "environment": "prod", "timeout": "1m",
         "params": {"services": ["noesis2-web-staging"], "traffic_percent": 10}},
        {"id": "smoke", "kind": "check", "environment": "prod", "timeout": "1m",
         "params": {"target": "canary", "service": "noesis2-web-staging", "paths": ["/"]}}]})
    with pytest.raises(ExecutorError, match="no traffic tag 'canary'"):
        executors["check"].start(local, local.stage("smoke"), new_command("smoke", "check"))
