"""Completions are bound to what the orchestrator started: the per-run secret in the stage-run id.

Why (issue 11): a build created before the push with the predictable tag
``run-<release>.e2e.a1`` was adopted by the executor and E2E "succeeded" without running;
a build nobody in the pipeline started completed the running stage because it carried the
stage-run tag. Both through the real Cloud Build client against the stand-in.
"""
from __future__ import annotations

import re
import secrets

import pytest
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors import RetryPolicy, build_executors
from shared.adapters.executors.cloud_build import build_as_dict
from shared.app.config import Settings
from shared.adapters.cloud_build_notification import event_from_build_notification
from shared.domain.events import Outcome, ReleaseStarted, StageFinished
from shared.domain.gate import GateOutcome, decide
from shared.domain.pipeline import load_pipeline
from shared.domain.state import StageStatus, new_release

PROJECT = "local-project"
FAST = RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=0.5, call_timeout_s=5)
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with StandIn(StandInConfig(project=PROJECT, log_dir=tmp_path_factory.mktemp("run-secret-logs"))) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint, cloud_run_endpoint=standin.endpoint,
                    artifact_registry="europe-west3-docker.pkg.dev/local-project/noesis2")


def at_stage(pipeline, target: str, commit: str):
    """The gate driven (pure) until ``target`` runs; earlier stages finish with recorded builds."""
    state = new_release(pipeline, repo="acme/noesis2", ref="refs/heads/main", commit=commit, version="1.0.0",
                        pushed_by="dev@example.com", now=T0, run_key=secrets.token_hex(32))
    decision = decide(pipeline, state, ReleaseStarted("e0", state.release_id), T0)
    for n in range(1, 30):
        state = decision.state
        running = [s for s in pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING]
        if running[0].id == target:
            return state, decision.commands
        st = state.stages[running[0].id]
        st.result["build_id"] = f"b{n}"
        decision = decide(pipeline, state, StageFinished(f"e{n}", state.release_id, running[0].id, st.stage_run_id,
                                                         Outcome.SUCCEEDED, "", {"build_id": f"b{n}"}), T0 + n)
    raise AssertionError(f"never reached {target}")


def attacker_build(settings, tags):
    client = gcp_clients.cloud_build(settings)
    build = cloudbuild_v1.Build(steps=[cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["version"])],
                                tags=tags)
    return client.create_build(project_id=PROJECT, build=build).metadata.build


def notification(build):
    data = build_as_dict(build)
    return event_from_build_notification(f"n-{build.id}", {"buildId": build.id, "status": data["status"]}, data)


def test_the_stage_run_id_carries_a_secret_that_fits_every_carrier():
    pipeline = load_pipeline(Settings().pipeline_file)
    state, commands = at_stage(pipeline, "e2e", "ab" * 20)
    run_id = state.stages["e2e"].stage_run_id
    secret = run_id.rsplit(".", 1)[1]
    assert run_id.startswith(f"{state.release_id}.e2e.a1.") and re.fullmatch(r"[0-9a-f]{20}", secret)
    assert re.fullmatch(r"[\w][\w.-]{0,127}", f"run-{run_id}"), "a Cloud Build tag"
    assert re.fullmatch(r"[a-z0-9_-]{0,63}", secret), "a Cloud Run label value"
    other, _ = at_stage(pipeline, "e2e", "ab" * 20)  # the same release id, another push's key
    assert other.stages["e2e"].stage_run_id != run_id


def test_a_build_made_in_advance_with_the_predictable_tag_is_not_adopted(standin, settings):
    pipeline = load_pipeline(settings.pipeline_file)
    state, commands = at_stage(pipeline, "e2e", "cd" * 20)
    rid = state.release_id
    planted = attacker_build(settings, [f"rel-{rid}", f"run-{rid}.e2e.a1", "stage-e2e"])
    standin.set_outcome("build", planted.id, "SUCCESS")
    (start,) = [c for c in commands if getattr(c, "stage", "") == "e2e"]
    handle = build_executors(settings, retry=FAST)["build"].start(pipeline, pipeline.stage("e2e"), start).handle
    assert handle["build_id"] != planted.id and not handle.get("reused")
    # Its SUCCESS notification names the predictable id: not the current run.
    state.stages["e2e"].result["build_id"] = handle["build_id"]
    event = notification(standin.finished_build(planted.id))
    assert event.stage_run_id == f"{rid}.e2e.a1"
    decision = decide(pipeline, state, event, T0 + 100)
    assert decision.outcome is GateOutcome.STALE and decision.state is None


def test_a_foreign_build_copying_our_tags_does_not_complete_the_stage(standin, settings):
    """Someone who can read our build's tags makes a build with the same ones: its id is not the recorded one."""
    pipeline = load_pipeline(settings.pipeline_file)
    state, commands = at_stage(pipeline, "e2e", "ef" * 20)
    (start,) = [c for c in commands if getattr(c, "stage", "") == "e2e"]
    ours = build_executors(settings, retry=FAST)["build"].start(pipeline, pipeline.stage("e2e"), start).handle
    state.stages["e2e"].result["build_id"] = ours["build_id"]
    copy = attacker_build(settings, list(standin.build(ours["build_id"]).tags))
    standin.set_outcome("build", copy.id, "SUCCESS")
    decision = decide(pipeline, state, notification(standin.finished_build(copy.id)), T0 + 100)
    assert decision.outcome is GateOutcome.STALE and f"build {copy.id} is not the build" in decision.reason
    forged = StageFinished("forged", state.release_id, "e2e", f"{state.release_id}.e2e.a1", Outcome.SUCCEEDED,
                           "", {"tests": 1000})
    assert decide(pipeline, state, forged, T0 + 100).outcome is GateOutcome.STALE
