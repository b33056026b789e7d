"""The pipeline definition: the shipped flows load, broken files say where they are broken."""
from __future__ import annotations

import copy

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
        {"id": "smoke", "kind": "check", "timeout": "5m", "params": {"target": "staging", "paths": ["/"]}},
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
        (broken(["stages", 1, "kind"], "jbo"), "stage 7 'staging-migrate': unknown kind 'jbo'"),
        (broken(["stages", 1, "params"], {}), "stage 7 'staging-migrate': kind job needs params.job"),
        (broken(["stages", 1, "timeout"], "soon"), "stage 7 'staging-migrate': timeout 'soon' is not a positive duration"),
        (broken(["stages", 1, "timeout"], KeyError), "stage 7 'staging-migrate': timeout is required"),
        (broken(["stages", 1, "environment"], "qa"), "stage 7 'staging-migrate': environment 'qa' is not one of"),
        (broken(["stages", 1, "colour"], "red"), "stage 7 'staging-migrate': unknown field(s) colour"),
        (broken(["stages", 1, "id"], "Bad Id"), "stage 7: id 'Bad Id' must be lower-case"),
        (broken(["stages", 1, "id"], "lint"), "stage 7 'lint': id is used twice"),
        (broken(["stages", 2, "params", "bake"], "10m"), "stage 3 'smoke': params.window + params.bake is 660s"),
        (broken(["stages", 0, "optional"], True), "stage 1 'lint': the first stage cannot be optional"),
        (broken(["stages"], []), "pipeline: 'stages' must be a non-empty list"),
        (broken(["extra"], 1), "pipeline: unknown top-level field(s) extra"),
    ],
)
def test_invalid_definitions_name_stage_and_field(doc, message):
    with pytest.raises(DefinitionError) as err:
        parse_pipeline(doc)
    assert message in str(err.value)


def test_deploy_percent_must_be_a_percentage():
    doc = base_doc()
    doc["stages"].append({"id": "deploy", "kind": "deploy", "timeout": "5m",
                          "params": {"services": ["web"], "traffic_percent": 150}})
    with pytest.raises(DefinitionError, match=r"stage 4 'deploy': params.traffic_percent must be an integer from 1 to 100"):
        parse_pipeline(doc)


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


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(DefinitionError, match="p.yaml: not valid YAML"):
        load_pipeline(bad)
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
