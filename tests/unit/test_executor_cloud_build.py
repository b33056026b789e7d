"""The Build a build stage asks for, and how a finished build reads back as a stage finish."""
from __future__ import annotations

import base64
import json

import pytest

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome, build_duration_s, builder_output, event_from_build_notification
from shared.adapters.executors.cloud_build import build_from_params, finish_of_build
from shared.domain.pipeline import load_pipeline, parse_pipeline

SETTINGS = Settings(artifact_registry="europe-west3-docker.pkg.dev/p/noesis2")
PIPELINE = load_pipeline(SETTINGS.pipeline_file)
INPUTS = {"tag": "v1.4.0-abc1234", "version": "1.4.0", "commit": "abc1234def567", "repo": "acme/noesis2"}


def command(stage: str, attempt: int = 1) -> StartStage:
    return StartStage("acme-noesis2-abc1234def56", stage, f"acme-noesis2-abc1234def56.{stage}.a{attempt}",
                      attempt, "build", INPUTS)


def test_build_stage_gets_image_tags_timeout_and_substituted_args():
    stage = PIPELINE.stage("build")
    build = build_from_params(SETTINGS, PIPELINE, stage, command("build"))
    image = "europe-west3-docker.pkg.dev/p/noesis2/noesis2:v1.4.0-abc1234"
    assert list(build.images) == [image]
    assert list(build.steps[0].args) == [
        "build", "--target", "runtime", "-t", image, "--label", "version=1.4.0", "--label", "commit=abc1234def567", ".",
    ]
    assert list(build.tags) == [
        "rel-acme-noesis2-abc1234def56", "run-acme-noesis2-abc1234def56.build.a1", "stage-build",
    ]
    assert build.timeout.total_seconds() == stage.timeout_s == 1800


def test_schema_stage_runs_proxy_and_psql_in_one_step_with_its_secret_and_source():
    settings = Settings(artifact_registry="europe-west3-docker.pkg.dev/p/noesis2", project="p",
                        pipeline_service_account="noesis2-pipeline@p.iam.gserviceaccount.com")
    build = build_from_params(settings, PIPELINE, PIPELINE.stage("vector-schema"), command("vector-schema"))
    (migrate,) = [s for s in build.steps if "psql" in " ".join(s.args)]
    script = migrate.args[1]
    assert "cloud-sql-proxy --port=5432 ${_CLOUDSQL_INSTANCE} &" in script  # the proxy runs in the psql step
    assert '"$$DATABASE_URL"' in script and list(migrate.secret_env) == ["DATABASE_URL"]
    assert dict(build.substitutions) == {"_CLOUDSQL_INSTANCE": "p:europe-west3:noesis2"}
    (secret,) = build.available_secrets.secret_manager
    assert (secret.env, secret.version_name) == ("DATABASE_URL", "projects/p/secrets/noesis2-schema-database-url/versions/latest")
    assert (build.source.connected_repository.repository, build.source.connected_repository.revision) == (
        "projects/p/locations/europe-west3/connections/github/repositories/acme-noesis2", "abc1234def567")
    assert build.service_account == "projects/p/serviceAccounts/noesis2-pipeline@p.iam.gserviceaccount.com"
    assert build.options.logging.name == "CLOUD_LOGGING_ONLY"


def test_push_stage_pushes_nothing_itself_the_build_stage_does():
    """Finding 3: a new build starts with an empty Docker cache, so stage 4 cannot docker push."""
    push = build_from_params(SETTINGS, PIPELINE, PIPELINE.stage("push"), command("push"))
    assert not any(list(step.args[:1]) == ["push"] for step in push.steps)
    assert list(build_from_params(SETTINGS, PIPELINE, PIPELINE.stage("build"), command("build")).images)


def test_env_dir_and_unknown_step_fields():
    doc = {"name": "p", "stages": [{"id": "s", "kind": "build", "timeout": "1m", "params": {"steps": [
        {"name": "python:3.11", "env": {"A": "${tag}"}, "dir": "app", "entrypoint": "python", "args": ["-V"]}]}}]}
    pipeline = parse_pipeline(doc)
    build = build_from_params(SETTINGS, pipeline, pipeline.stage("s"), command("s"))
    assert list(build.steps[0].env) == ["A=v1.4.0-abc1234"] and build.steps[0].dir_ == "app"
    doc["stages"][0]["params"]["steps"][0]["entrypiont"] = "x"
    pipeline = parse_pipeline(doc)
    with pytest.raises(ExecutorError, match="entrypiont"):
        build_from_params(SETTINGS, pipeline, pipeline.stage("s"), command("s"))


def _notification(status: str, outputs: list[bytes], **extra) -> dict:
    return {
        "id": "b-1", "status": status, "tags": ["rel-r", "run-r.unit.a3", "stage-unit"],
        "startTime": "2030-01-01T10:00:00.250Z", "finishTime": "2030-01-01T10:01:30.750123456Z",
        "results": {"buildStepOutputs": [base64.b64encode(o).decode() for o in outputs]}, **extra,
    }


def test_notification_carries_duration_and_the_last_step_output():
    verdict = json.dumps({"tests": 120, "failed": 0, "status": "forged"}).encode()
    event = event_from_build_notification("m1", {"status": "SUCCESS", "buildId": "b-1"},
                                          _notification("SUCCESS", [b"", verdict, b""]))
    assert event.outcome is Outcome.SUCCEEDED and event.stage == "unit" and event.stage_run_id == "r.unit.a3"
    assert event.result["tests"] == 120
    assert event.result["status"] == "SUCCESS"  # a step cannot overwrite ours
    assert event.result["duration_s"] == pytest.approx(90.5, abs=0.001)


@pytest.mark.parametrize("outputs, expected", [
    ([], {}),
    ([b"not json"], {}),
    ([b"[1, 2]"], {}),
    ([b'{"a": 1}', b'{"b": 2}'], {"b": 2}),
])
def test_builder_output_takes_only_a_json_object_from_the_last_writer(outputs, expected):
    assert builder_output(_notification("SUCCESS", outputs)) == expected


def test_duration_missing_when_a_time_is_missing():
    assert build_duration_s({"startTime": "2030-01-01T10:00:00Z"}) is None


def test_a_finished_build_proto_reads_like_its_notification():
    from google.cloud.devtools import cloudbuild_v1

    build = cloudbuild_v1.Build(id="b-9", status=cloudbuild_v1.Build.Status.FAILURE, status_detail="step 1 failed",
                                tags=["run-r.lint.a1"], log_url="http://logs/b-9")
    build.start_time = {"seconds": 100}
    build.finish_time = {"seconds": 160}
    finish = finish_of_build(build)
    assert finish.outcome is Outcome.FAILED
    assert finish.reason == "build b-9 ended FAILURE: step 1 failed"
    assert finish.result["duration_s"] == 60 and finish.result["log_url"] == "http://logs/b-9"
    build.status = cloudbuild_v1.Build.Status.WORKING
    assert finish_of_build(build) is None
