"""Placeholder substitution in stage params: ours are filled, everything else survives."""
from __future__ import annotations

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.adapters.executors.substitute import image_ref, substitute, variables_for
from shared.domain.pipeline import load_pipeline

VARS = {"tag": "v1.2.3-abc1234", "version": "1.2.3", "commit": "abc1234def", "image": "reg/app:v1.2.3-abc1234"}


def test_fills_known_placeholders_in_nested_params():
    params = {"args": ["build", "-t", "${image}", "--label", "version=${version}"], "env": {"T": "${tag}"}, "n": 3}
    assert substitute(params, VARS) == {
        "args": ["build", "-t", "reg/app:v1.2.3-abc1234", "--label", "version=1.2.3"],
        "env": {"T": "v1.2.3-abc1234"},
        "n": 3,
    }


def test_unknown_placeholders_and_cloud_build_variables_stay():
    text = "--port=5432 ${CLOUDSQL_INSTANCE} $PROJECT_ID $BUILDER_OUTPUT/output ${_CUSTOM}"
    assert substitute(text, VARS) == text


def test_escaped_dollar_survives_even_before_a_known_name():
    assert substitute('psql "$$DATABASE_URL"', VARS) == 'psql "$$DATABASE_URL"'
    assert substitute("$${tag} ${tag}", VARS) == "$${tag} v1.2.3-abc1234"


def test_does_not_modify_the_frozen_pipeline_params():
    pipeline = load_pipeline(Settings().pipeline_file)
    stage = pipeline.stage("build")
    before = repr(stage.params)
    substitute(stage.params, VARS)
    assert repr(stage.params) == before


def test_variables_come_from_command_inputs_and_settings():
    pipeline = load_pipeline(Settings().pipeline_file)
    command = StartStage("rel-1", "build", "rel-1.build.a2", 2, "build",
                         {"tag": "v2.0.0-0123456", "version": "2.0.0", "commit": "0123456789ab"})
    settings = Settings(artifact_registry="europe-west3-docker.pkg.dev/p/noesis2/")
    values = variables_for(settings, pipeline, command)
    assert values["image"] == "europe-west3-docker.pkg.dev/p/noesis2/noesis2:v2.0.0-0123456"
    assert values["stage_run_id"] == "rel-1.build.a2"
    assert values["release_id"] == "rel-1"
    assert values["registry"] == "europe-west3-docker.pkg.dev/p/noesis2/"


def test_image_without_registry_is_just_name_and_tag():
    pipeline = load_pipeline(Settings().pipeline_file)
    assert image_ref(Settings(artifact_registry=""), pipeline, "v1") == "noesis2:v1"
