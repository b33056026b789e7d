"""The pipeline definition: the shipped flows load, broken files say where they are broken."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from shared.app.config import REPO_ROOT
from shared.domain.errors import DefinitionError
from shared.domain.pipeline import StageKind, load_pipeline, parse_pipeline

SEED_ORDER = ["preflight", "lint", "unit", "build", "push", "e2e", "vector-schema", "staging-migrate",
              "staging-deploy", "ingestion-smoke", "staging-smoke", "chaos", "approval", "prod-migrate",
              "prod-deploy", "prod-smoke", "traffic-100"]


@pytest.mark.parametrize("name", ["noesis2.yaml", "sample.yaml"])
def test_shipped_flows_load_in_the_seed_order(name):
    pipeline = load_pipeline(REPO_ROOT / "pipelines" / name)
    assert [s.id for s in pipeline.stages] == SEED_ORDER
    assert [s.number for s in pipeline.stages][11] == "10a" and pipeline.stage("chaos").optional
    assert pipeline.approval_index == SEED_ORDER.index("approval")
    assert pipeline.needs_approval("prod-migrate") and not pipeline.needs_approval("staging-smoke")


def test_noesis2_carries_the_seed_parameters():
    p = load_pipeline(REPO_ROOT / "pipelines" / "noesis2.yaml")
    assert p.stage("staging-migrate").params["job"] == "noesis2-migrate"
    assert "migrate_schemas" in p.stage("staging-migrate").params["args"]
    assert list(p.stage("staging-deploy").params["services"]) == [
        "noesis2-web-staging", "noesis2-worker-staging", "noesis2-beat-staging", "noesis2-litellm-staging"]
    assert p.stage("prod-deploy").params["traffic_percent"] == 10
    assert p.stage("traffic-100").params["percent"] == 100
    assert dict(p.stage("prod-migrate").params["secrets"])  # prod secrets from Secret Manager
    assert p.stage("build").kind is StageKind.BUILD and "${image}" in p.stage("build").params["steps"][0]["args"]


def base_doc():
    return {"name": "t", "stages": [
        {"id": "lint", "kind": "build", "timeout": "5m", "params": {"steps": [{"name": "local"}]}},
        {"id": "staging-migrate", "number": "7", "kind": "job", "timeout": "5m", "params": {"job": "m"}},
        {"id": "smoke", "kind": "check", "timeout": "5m",
         "params": {"target": "staging", "url": "https://status.example.com", "paths": ["/"]}},
    ]}


def broken(path, value):
    doc = base_doc()
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        (broken(["stages", 1, "kind"], "jbo"), "stage 'staging-migrate': kind: unknown kind 'jbo' (did you mean 'job'?)"),
        (broken(["stages", 1, "kind"], KeyError), "stage 'staging-migrate': kind: missing (required)"),
        (broken(["stages", 1, "params"], {}), "stage 'staging-migrate': params.job: missing (required)"),
        (broken(["stages", 1, "timeout"], "soon"), "stage 'staging-migrate': timeout: 'soon' is not a positive duration"),
        (broken(["stages", 1, "timeout"], "9999h"), "stage 'staging-migrate': timeout: '9999h' is longer than the limit of 24h"),
        (broken(["stages", 1, "timeout"], KeyError), "stage 'staging-migrate': timeout: missing (required)"),
        (broken(["stages", 1, "environment"], "qa"), "stage 'staging-migrate': environment: 'qa' is not one of build, staging, prod"),
        (broken(["stages", 1, "colour"], "red"), "stage 'staging-migrate': colour: unknown field"),
        (broken(["stages", 1, "timout"], "1m"), "stage 'staging-migrate': timout: unknown field (did you mean 'timeout'?)"),
        (broken(["stages", 1, "id"], "Bad Id"), "stage 2: id: 'Bad Id' must be lower-case"),
        (broken(["stages", 1, "id"], KeyError), "stage 2: id: missing (required)"),
        (broken(["stages", 1, "id"], "lint"), "stage 'lint': id: used twice"),
        (broken(["stages", 1, "optional"], "yes"), "stage 'staging-migrate': optional: must be true or false"),
        (broken(["stages", 1, "params", "job"], ["m"]), "stage 'staging-migrate': params.job: must be a non-empty string"),
        (broken(["stages", 1, "params", "args"], "migrate"), "stage 'staging-migrate': params.args: must be a list of arguments"),
        (broken(["stages", 1, "params", "args"], ["--tag", "${tga}"]),
         "stage 'staging-migrate': params.args[1]: unknown placeholder ${tga} (did you mean 'tag'?)"),
        (broken(["stages", 2, "params", "bake"], "25h"), "stage 'smoke': params.bake: '25h' is longer than the limit of 24h"),
        (broken(["stages", 2, "params", "bake"], "8m"), "stage 'smoke': params.bake: params.window + params.bake is 540s, longer than the timeout (300s)"),
        (broken(["stages", 2, "params", "window"], "soon"), "stage 'smoke': params.window: 'soon' is not a positive duration"),
        (broken(["stages", 2, "params", "target"], "qa"), "stage 'smoke': params.target: 'qa' is not one of staging, prod, canary"),
        (broken(["stages", 2, "params", "paths"], ["health"]), "stage 'smoke': params.paths: item 0: must be a path starting with '/'"),
        (broken(["stages", 0, "optional"], True), "stage 'lint': optional: the first stage cannot be optional"),
        (broken(["stages"], []), "pipeline: stages: must be a non-empty list"),
        (broken(["extra"], 1), "pipeline: extra: unknown field"),
        (broken(["stage"], 1), "pipeline: stage: unknown field (did you mean 'stages'?)"),
    ],
)
def test_invalid_definitions_name_stage_and_field(doc, message):
    with pytest.raises(DefinitionError) as err:
        parse_pipeline(doc)
    assert message in str(err.value)


def with_stage(stage):
    doc = base_doc()
    doc["stages"].append(stage)
    return doc


@pytest.mark.parametrize(
    "stage, message",
    [
        ({"id": "deploy", "kind": "deploy", "timeout": "5m", "params": {"services": ["web"], "traffic_percent": 150}},
         "stage 'deploy': params.traffic_percent: must be an integer from 1 to 100, got 150"),
        ({"id": "deploy", "kind": "deploy", "timeout": "5m", "params": {"services": ["web"], "trafic_percent": 10}},
         "stage 'deploy': params.trafic_percent: unknown field (did you mean 'traffic_percent'?)"),
        ({"id": "deploy", "kind": "deploy", "timeout": "5m", "params": {"services": "web", "traffic_percent": 10}},
         "stage 'deploy': params.services: must be a list of service names, got str 'web'"),
        ({"id": "ok", "kind": "approval", "timeout": "1h", "params": {"approvers": "a@example.com"}},
         "stage 'ok': params.approvers: must be a list of e-mail addresses, got str 'a@example.com'"),
        ({"id": "ok", "kind": "approval", "timeout": "1h", "params": {"approvers": ["a@example.com"], "expiry_s": 5}},
         "stage 'ok': params.expiry_s: must be an integer from 60 to 604800"),
        ({"id": "ok", "kind": "approval", "timeout": "9999h", "params": {"approvers": ["a@example.com"]}},
         "stage 'ok': timeout: '9999h' is longer than the limit of 168h"),
        ({"id": "b", "kind": "build", "timeout": "5m", "params": {"steps": [{"args": ["x"]}]}},
         "stage 'b': params.steps: item 0: must be a mapping with a 'name'"),
    ],
)
def test_params_are_checked_by_kind(stage, message):
    with pytest.raises(DefinitionError) as err:
        parse_pipeline(with_stage(stage))
    assert message in str(err.value)


def test_cloud_build_and_shell_placeholders_are_left_alone():
    stage = {"id": "b", "kind": "build", "timeout": "5m", "params": {
        "substitutions": {"_CLOUDSQL_INSTANCE": "p:r:i"}, "steps": [
            {"name": "x", "args": ["${_CLOUDSQL_INSTANCE}", "$PROJECT_ID", "$${tga}", "${image}", "${project}"]}]}}
    assert parse_pipeline(with_stage(stage)).stage("b").params["steps"][0]["args"][3] == "${image}"


@pytest.mark.parametrize("params, message", [
    # Cloud Build refuses a user substitution without a leading '_' (issue 12, finding 4) ...
    ({"steps": [{"name": "x", "args": ["${CLOUDSQL_INSTANCE}"]}]}, "is not a Cloud Build substitution"),
    ({"substitutions": {"CLOUDSQL_INSTANCE": "p:r:i"}, "steps": [{"name": "x"}]}, "must match ^_"),
    # ... one nobody defined, and a secretEnv without availableSecrets (finding 2)
    ({"steps": [{"name": "x", "args": ["${_INSTANCE}"]}]}, "define it in params.substitutions"),
    ({"steps": [{"name": "x", "secretEnv": ["DATABASE_URL"]}]}, "not defined in params.available_secrets"),
    ({"source": "svn", "steps": [{"name": "x"}]}, "params.source"),
    ({"logging": "STDOUT", "steps": [{"name": "x"}]}, "params.logging"),
])
def test_build_fields_cloud_build_refuses_are_refused_at_load(params, message):
    stage = {"id": "b", "kind": "build", "timeout": "5m", "params": params}
    with pytest.raises(DefinitionError, match=re.escape(message)):
        parse_pipeline(with_stage(stage))


def test_digest_is_stable_and_changes_with_any_edit():
    first, again = parse_pipeline(base_doc()), parse_pipeline(copy.deepcopy(base_doc()))
    assert first.digest == again.digest
    edited = base_doc()
    edited["stages"][1]["params"]["job"] = "other"
    assert parse_pipeline(edited).digest != first.digest


def test_definition_is_frozen():
    pipeline = parse_pipeline(base_doc())
    with pytest.raises(TypeError):
        pipeline.stages[1].params["job"] = "x"
    with pytest.raises(AttributeError):
        pipeline.stages[1].timeout_s = 1


def test_errors_name_file_and_line(tmp_path):
    text = (REPO_ROOT / "pipelines" / "sample.yaml").read_text()
    bad = tmp_path / "p.yaml"
    bad.write_text(text.replace("traffic_percent: 10\n", "trafic_percent: 10\n"))
    line = next(i for i, row in enumerate(bad.read_text().splitlines(), 1) if "trafic_percent" in row)
    with pytest.raises(DefinitionError) as err:
        load_pipeline(bad)
    assert str(err.value) == (f"{bad}:{line}: stage 'prod-deploy': params.trafic_percent: unknown field"
                              " (did you mean 'traffic_percent'?)")


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nstages: [\n")
    with pytest.raises(DefinitionError) as err:
        load_pipeline(bad)
    assert str(err.value).startswith(f"{bad}:3: not valid YAML: ") and "\n" not in str(err.value)
    with pytest.raises(DefinitionError, match="missing.yaml"):
        load_pipeline(tmp_path / "missing.yaml")


def test_a_check_may_bake_longer_than_a_function_runs_as_long_as_its_timeout_covers_it():
    # Checks run as scheduled probes: no 540 s function limit, only the stage's own timeout.
    doc = broken(["stages", 2, "timeout"], "20m")
    doc["stages"][2]["params"].update(bake="15m", probe_interval="10s")
    assert parse_pipeline(doc).stage("smoke").params["bake"] == "15m"
    doc["stages"][2]["timeout"] = "15m"
    with pytest.raises(DefinitionError, match="params.window \\+ params.bake is 960s, longer than the timeout"):
        parse_pipeline(doc)


def test_the_services_a_pipeline_changes_per_environment_are_its_lock_keys():
    from shared.domain.pipeline import load_pipeline

    noesis2 = load_pipeline(Path(__file__).resolve().parents[2] / "pipelines" / "noesis2.yaml")
    assert noesis2.services_in("prod") == ("noesis2-beat", "noesis2-litellm", "noesis2-web", "noesis2-worker")
    assert noesis2.services_in("staging") == tuple(sorted(f"noesis2-{s}-staging" for s in ("web", "worker", "beat", "litellm")))
    assert noesis2.services_in("build") == ()
