"""Prod releases all four noesis2 services: web and litellm on a 10 % canary, worker and beat
(no requests, no split) in the same gated stage; traffic 100 % then moves web and litellm."""
from __future__ import annotations

import pytest
from google.cloud import run_v2

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors import RetryPolicy, build_executors
from shared.adapters.executors.traffic import current_split
from shared.app.config import REPO_ROOT, Settings
from shared.domain.commands import StartStage
from shared.domain.pipeline import load_pipeline

PROJECT, REGION = "local-project", "europe-west3"
PIPELINE = load_pipeline(REPO_ROOT / "pipelines" / "noesis2.yaml")
SERVICES = ("noesis2-web", "noesis2-litellm", "noesis2-worker", "noesis2-beat")


@pytest.fixture
def settings(tmp_path):
    with StandIn(StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT, log_dir=tmp_path)) as standin:
        settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=standin.endpoint,
                            artifact_registry=f"{REGION}-docker.pkg.dev/{PROJECT}/noesis2")
        standin.set_outcome("service", "noesis2-", "SUCCESS")
        for tag in ("v0.9.0-base", "v1.0.0-abc1234"):  # Cloud Run refuses an image the registry does not hold
            standin.push_image(f"{settings.artifact_registry}/noesis2:{tag}")
        services = gcp_clients.run_services(settings)
        for name in SERVICES:
            services.create_service(parent=f"projects/{PROJECT}/locations/{REGION}", service_id=name,
                                    service=run_v2.Service(template=run_v2.RevisionTemplate(containers=[
                                        run_v2.Container(image=f"{settings.artifact_registry}/noesis2:v0.9.0-base")])),
                                    ).result(30)
        yield settings


def run(executors, stage_id: str):
    stage = PIPELINE.stage(stage_id)
    command = StartStage("acme-noesis2-1", stage_id, f"acme-noesis2-1.{stage_id}.a1", 1, stage.kind.value,
                         {"tag": "v1.0.0-abc1234", "version": "1.0.0", "commit": "abc1234def", "repo": "acme/noesis2"})
    result = executors[stage.kind.value].start(PIPELINE, stage, command)
    state = type("S", (), {"result": result.handle, "stage_run_id": command.stage_run_id})()
    finish = executors[stage.kind.value].poll(PIPELINE, stage, state)
    assert finish is not None and finish.outcome.value == "succeeded", finish


def shares(settings) -> dict[str, list[int]]:
    services = gcp_clients.run_services(settings)
    found = {}
    for name in SERVICES:
        service = services.get_service(name=f"projects/{PROJECT}/locations/{REGION}/services/{name}")
        found[name] = sorted(s.percent for s in current_split(service))
    return found


def test_prod_releases_all_four_services_canary_where_it_applies(settings):
    executors = build_executors(settings, retry=RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=2))
    run(executors, "prod-deploy")
    assert shares(settings) == {"noesis2-web": [10, 90], "noesis2-litellm": [10, 90],
                                "noesis2-worker": [100], "noesis2-beat": [100]}
    run(executors, "traffic-100")
    assert all(split == [100] for split in shares(settings).values())
