"""The gcloud commands the deploy runs, checked against the installed Cloud SDK's own --help.

The whole plan takes about a minute (``python -m deploy.gcloud_check``, listed in
deploy/README.md); this test covers the commands issue 12 added or changed and the
teardown of the scratch-project path."""
from __future__ import annotations

import shutil

import pytest

from deploy.config import load_config
from deploy.gcloud_check import TEARDOWN, command_path, unknown_flags
from deploy.model import build_plan

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the Cloud SDK (gcloud) on PATH")
CHANGED = {("functions", "deploy"), ("builds", "submit"), ("pubsub", "subscriptions", "update"),
           ("iam", "workload-identity-pools", "providers", "create-oidc"),
           ("iam", "service-accounts", "add-iam-policy-binding"),
           ("artifacts", "repositories", "add-iam-policy-binding"), ("artifacts", "repositories", "create"),
           ("iam", "roles", "create"), ("builds", "connections", "add-iam-policy-binding")}
ENV = {"RELEASE_PROJECT": "acme-release", "RELEASE_BUILD_REGION": "europe-west1",
       "RELEASE_ARTIFACT_REGISTRY": "europe-west3-docker.pkg.dev/acme-release/noesis2",
       "DEPLOY_GITHUB_REPOSITORY": "acme/noesis2", "DEPLOY_GITHUB_REPOSITORY_ID": "1",
       "DEPLOY_APP_SERVICE_ACCOUNTS": "noesis2-app@acme-release.iam.gserviceaccount.com"}


def test_changed_deploy_commands_and_the_teardown_exist_with_their_flags():
    commands = [c for c in build_plan(load_config(ENV)).commands() if command_path(c) in CHANGED]
    assert {command_path(c) for c in commands} == CHANGED
    assert unknown_flags([*commands, *TEARDOWN]) == {}


def test_a_flag_the_sdk_does_not_know_is_caught():
    assert unknown_flags([("builds", "submit", ".", "--no-such-flag-xyz")]) == {
        ("builds", "submit"): ["--no-such-flag-xyz"]}


def test_the_wif_attribute_mapping_is_parsed_by_gclouds_own_argdict():
    """--attribute-mapping is a KEY=VALUE,… flag (ArgDict): no CEL expression of deploy/wif.py may hold a
    comma, and each arrives whole. Checked with the installed SDK's parser, not ours."""
    import sys
    from pathlib import Path

    lib = Path(shutil.which("gcloud")).resolve().parents[1] / "lib"
    sys.path[len(sys.path):] = [str(lib), str(lib / "third_party")]
    arg_parsers = pytest.importorskip("googlecloudsdk.calliope.arg_parsers")
    config = load_config({**ENV, "DEPLOY_WIF_TAG_PREFIX": "v",
                          "DEPLOY_WIF_WORKFLOWS": ".github/workflows/release.yml,.github/workflows/hotfix.yml"})
    provider = next(r for r in build_plan(config).resources if r.kind == "wif-provider")
    flag = next(a for a in provider.create if a.startswith("--attribute-mapping=")).split("=", 1)[1]
    assert arg_parsers.ArgDict()(flag) == config.wif_policy.attribute_mapping()
