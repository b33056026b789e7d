"""Which registry tag a rollback picks: pure rules, no server."""
from __future__ import annotations

import pytest

from shared.app.config import Settings
from shared.domain.errors import ConfigError, ExecutorError
from shared.adapters.executors.registry import package_path, parse_release_tag, pick_tag_before
from shared.adapters.executors.registry_rollback import deploy_env, split_image
from shared.domain.pipeline import parse_pipeline

REGISTRY = "europe-west3-docker.pkg.dev/acme/noesis2"


@pytest.mark.parametrize("tags, before, expected", [
    (["v1.0.0-aaaaaaa", "v1.1.0-bbbbbbb", "v1.2.0-ccccccc"], "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"),
    # semver, not text: 1.10.0 > 1.9.0 > 1.2.0, and 2.0.0 is above the one being rolled back
    (["v1.9.0-aaaaaaa", "v1.10.0-bbbbbbb", "v1.2.0-ccccccc", "v2.0.0-ddddddd"], "v1.11.0-eeeeeee", "v1.10.0-bbbbbbb"),
    # the order the registry lists them in does not matter
    (["v1.2.0-ccccccc", "v1.0.0-aaaaaaa", "v1.1.0-bbbbbbb"], "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"),
    # strictly below: another build of the same version is not older
    (["v1.2.0-1111111", "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"], "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"),
    # non-release tags and pre-releases are ignored even when they sort higher
    (["latest", "main", "sha-abcdef0", "v1.1.0", "1.1.5-abc1234", "v1.1.9-rc.1-abcdef0", "v1.1.8-XYZ1234",
      "v1.0.0-aaaaaaa"], "v1.2.0-ccccccc", "v1.0.0-aaaaaaa"),
    # rolling back from a pre-release: the release below it counts, the release of the same core does not
    (["v1.2.0-ccccccc", "v1.1.0-bbbbbbb"], "v1.2.0-rc.2-ddddddd", "v1.1.0-bbbbbbb"),
    # two builds of one older version: the choice does not depend on listing order
    (["v1.1.0-bbbbbbb", "v1.1.0-aaaaaaa"], "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"),
    (["v1.1.0-aaaaaaa", "v1.1.0-bbbbbbb"], "v1.2.0-ccccccc", "v1.1.0-bbbbbbb"),
])
def test_picks_the_highest_release_below(tags, before, expected):
    assert pick_tag_before(tags, before) == expected


@pytest.mark.parametrize("tags", [[], ["latest"], ["v1.2.0-ccccccc", "v1.3.0-ddddddd"], ["v0.9.0-rc.1-aaaaaaa"]])
def test_nothing_older_is_none(tags):
    assert pick_tag_before(tags, "v1.2.0-ccccccc") is None


@pytest.mark.parametrize("before", ["latest", "v1.2-abc1234", "1.2.0-abc1234", ""])
def test_a_current_tag_that_is_not_a_release_tag_is_refused(before):
    with pytest.raises(ExecutorError, match="is not a release tag"):
        pick_tag_before(["v1.0.0-aaaaaaa"], before)


def test_release_tag_parts():
    tag = parse_release_tag("v1.2.3-rc.1-abc1234")
    assert (str(tag.version), tag.commit, tag.is_release) == ("1.2.3-rc.1", "abc1234", False)
    tag = parse_release_tag("v10.0.1-" + "f" * 40)
    assert (str(tag.version), tag.commit, tag.is_release) == ("10.0.1", "f" * 40, True)
    assert parse_release_tag("v1.2.3-ABC1234") is None  # the sha part is lower-case hex
    # build metadata: pushed as "_" (an image tag cannot hold "+"), read back as semver's "+"
    tag = parse_release_tag("v1.2.3_build.5-abc1234")
    assert (str(tag.version), tag.commit, tag.is_release) == ("1.2.3+build.5", "abc1234", False)


def test_package_path_from_the_registry_setting():
    settings = Settings(artifact_registry=REGISTRY + "/")
    assert package_path(settings, "noesis2") == (
        "projects/acme/locations/europe-west3/repositories/noesis2/packages/noesis2")
    assert package_path(settings, "team/web").endswith("/packages/team%2Fweb")
    with pytest.raises(ConfigError, match="RELEASE_ARTIFACT_REGISTRY='local' is not LOCATION-docker.pkg.dev"):
        package_path(Settings(artifact_registry="local"), "noesis2")


def test_split_image_names_image_and_tag():
    settings = Settings(artifact_registry=REGISTRY)
    assert split_image(settings, f"{REGISTRY}/noesis2:v1.2.0-ccccccc") == ("noesis2", "v1.2.0-ccccccc")
    assert split_image(settings, f"{REGISTRY}/team/web@sha256:" + "0" * 64) == ("team/web", "")
    with pytest.raises(ExecutorError, match="not under the registry"):
        split_image(settings, "docker.io/library/nginx:1.27")


def test_deploy_env_is_the_last_deploy_stage_naming_the_service():
    pipeline = parse_pipeline({"name": "p", "stages": [
        {"id": "staging", "kind": "deploy", "timeout": "5m",
         "params": {"services": ["web"], "traffic_percent": 100, "env": {"STAGE": "staging"}}},
        {"id": "prod", "kind": "deploy", "timeout": "5m",
         "params": {"services": ["web", "worker"], "traffic_percent": 10,
                    "env": {"RELEASE_TAG": "${tag}", "VERSION": "${version}", "DB": "${CLOUDSQL}"}}},
    ]})
    variables = {"tag": "v1.1.0-bbbbbbb", "version": "1.1.0"}
    assert deploy_env(pipeline, "web", variables) == {"RELEASE_TAG": "v1.1.0-bbbbbbb", "VERSION": "1.1.0",
                                                      "DB": "${CLOUDSQL}"}
    assert deploy_env(pipeline, "beat", variables) is None
