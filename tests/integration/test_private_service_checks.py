"""Checks of Cloud Run services that require authentication: the probes' GETs carry a Google ID
token of the account the checks run as, audience the service's URL, and the stand-in's routers
admit it only while that account holds run.invoker, answering 401/403 as Cloud Run does."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from deploy.config import DeployConfig
from deploy.iam_policy import policies
from deploy.model import build_plan
from local.standin.server import StandIn, StandInConfig
from local.token_issuer import LocalTokenIssuer
from shared.adapters.executors import RetryPolicy, build_executors
from shared.adapters.http_prober import RequestsProber
from shared.adapters.id_token_source import local_issuer_id_tokens
from shared.app.config import REPO_ROOT, Settings
from shared.app.ports import SystemClock
from shared.app.probing import ProbeService
from shared.domain.commands import StartStage
from shared.domain.events import Outcome
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import StageState, StageStatus
from shared.testing.fakes import FakeProbeScheduler, FakePublisher, FakeStore
from shared.testing.probe_runner import run_stage

PROJECT, REGION = "local-project", "europe-west3"
LOCAL_REGISTRY = "reg.local"  # images under it run as real processes (the sample app)
RUNTIME = f"release-runtime@{PROJECT}.iam.gserviceaccount.com"  # the account the checks run as
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)
PIPELINE = parse_pipeline({"name": "app", "image": "app", "stages": [
    {"id": "staging-deploy", "kind": "deploy", "environment": "staging", "timeout": "2m",
     "params": {"services": ["private-web-staging"], "traffic_percent": 100}},
    {"id": "staging-smoke", "kind": "check", "environment": "staging", "timeout": "2m",
     "params": {"target": "staging", "service": "private-web-staging", "paths": ["/", "/health/liveliness"],
                "window": "3s", "auth": "id_token"}},
    {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h", "params": {"approvers": ["b@x.io"]}},
    {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "2m",
     "params": {"services": ["private-web"], "traffic_percent": 10}},
    {"id": "prod-smoke", "kind": "check", "environment": "prod", "timeout": "2m",
     "params": {"target": "canary", "service": "private-web", "paths": ["/", "/health/liveliness"],
                "window": "3s", "bake": "1s", "auth": "id_token"}},
]})


@pytest.fixture(scope="module")
def issuer():
    running = LocalTokenIssuer().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def standin(tmp_path_factory, issuer):
    cfg = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT,
                        local_images=frozenset({f"{LOCAL_REGISTRY}/app"}),
                        log_dir=tmp_path_factory.mktemp("private-services"))
    with StandIn(cfg) as running:
        certs = lambda: {issuer.key_id: issuer.certificate.decode()}  # noqa: E731 - Google's keys, locally
        for service, roles in invoker_grants().items():
            invokers = tuple(m.removeprefix("serviceAccount:") for m in roles["roles/run.invoker"])
            running.make_service_private(service, invokers, certs)
        yield running


def invoker_grants() -> dict:
    """What deploy/'s plan grants on the checked services: run.invoker for the runtime account, nothing else."""
    config = DeployConfig(settings=Settings(project=PROJECT, region=REGION), pipeline=PIPELINE,
                          github_repository="acme/app", project_number="123456789012",
                          app_service_account_list=(f"app@{PROJECT}.iam.gserviceaccount.com",))
    grants = policies(build_plan(config)).run_services
    assert grants == {service: {"roles/run.invoker": [f"serviceAccount:{RUNTIME}"]}
                      for service in ("private-web", "private-web-staging")}
    return grants


@pytest.fixture(scope="module")
def settings(standin, issuer) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint,
                    artifact_registry=LOCAL_REGISTRY, id_token_url=issuer.token_url, id_token_account=RUNTIME)


@pytest.fixture(scope="module")
def executors(settings):
    return build_executors(settings, retry=FAST)


def command(release: str, stage: str, kind: str, tag: str) -> StartStage:
    return StartStage(release, stage, f"{release}.{stage}.a1", 1, kind,
                      {"tag": tag, "version": tag[1:].split("-")[0], "commit": uuid.uuid4().hex, "repo": "acme/app"})


def deploy(executors, release: str, stage: str, tag: str) -> None:
    cmd = command(release, stage, "deploy", tag)
    started = executors["deploy"].start(PIPELINE, PIPELINE.stage(stage), cmd)
    state = StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=cmd.stage_run_id,
                       result={"stage_run_id": cmd.stage_run_id, **dict(started.handle)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        finish = executors["deploy"].poll(PIPELINE, PIPELINE.stage(stage), state)
        if finish is not None:
            assert finish.outcome is Outcome.SUCCEEDED, finish.reason
            return
        time.sleep(0.05)
    raise AssertionError(f"{stage} of {release} did not finish")


def check(settings, executors, release: str, stage: str, tag: str) -> dict:
    prober = RequestsProber(id_tokens=local_issuer_id_tokens(settings.id_token_url, settings.id_token_account))
    service = ProbeService(FakeStore(), executors, FakePublisher(), FakeProbeScheduler(), prober, SystemClock(),
                           settings)
    return run_stage(service, service.scheduler, executors["check"], PIPELINE, command(release, stage, "check", tag))


def test_smoke_and_canary_checks_of_private_services_pass_with_an_id_token(standin, settings, executors, issuer):
    deploy(executors, "app-r1", "staging-deploy", "v1.0.0-aaaaaaa")
    smoke = check(settings, executors, "app-r1", "staging-smoke", "v1.0.0-aaaaaaa")
    assert smoke["outcome"] == "succeeded", smoke["reason"]
    url = smoke["result"]["url"]
    # the same service refuses a caller without a token, and a token for another audience
    assert requests.get(url + "/", timeout=5).status_code == 403
    other = issuer.mint(RUNTIME, "https://elsewhere.example")
    assert requests.get(url + "/", headers={"Authorization": f"Bearer {other}"}, timeout=5).status_code == 401

    deploy(executors, "app-r1", "prod-deploy", "v1.0.0-aaaaaaa")  # first deploy: all the traffic
    deploy(executors, "app-r2", "prod-deploy", "v1.1.0-bbbbbbb")  # the canary: 10 % and its tag
    canary = check(settings, executors, "app-r2", "prod-smoke", "v1.1.0-bbbbbbb")
    assert canary["outcome"] == "succeeded", canary["reason"]
    assert canary["result"]["bake"]["rounds"] >= 1 and not canary["result"]["bake"]["failed"]


def test_without_the_invoker_grant_the_check_fails_naming_the_403(standin, settings, executors):
    deploy(executors, "app-r3", "staging-deploy", "v1.2.0-ccccccc")
    standin.revoke_invoker("private-web-staging", RUNTIME)
    try:
        smoke = check(settings, executors, "app-r3", "staging-smoke", "v1.2.0-ccccccc")
    finally:
        standin.grant_invoker("private-web-staging", RUNTIME)
    assert smoke["outcome"] == "failed"
    assert "GET / answered 403" in smoke["reason"]
