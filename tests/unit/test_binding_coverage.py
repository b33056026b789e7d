"""Every IAM binding deploy/'s plan creates is either exercised by a test that removes it and shows
the path that needs it failing (PERMISSION_DENIED / 403 naming the permission), or named in
deploy/README.md ("Which local path exercises each binding") with the reason no local path can.
A new binding with neither fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deploy.config import load_config
from deploy.model import build_plan, functions, sa_member
from shared.app.config import REPO_ROOT
from tests.unit.test_deploy_plan import ENV

LSP = "tests/integration/test_iam_least_privilege.py"
# (scope, role, principal, target) -> "test: FILE::NAME" or "readme: the key as it appears in deploy/README.md"
COVERAGE = {
    ("project", "roles/cloudbuild.builds.editor", "runtime", "project"):
        f"test: {LSP}::test_without_the_grant_the_stage_fails_naming_the_permission",
    ("project", "roles/run.developer", "runtime", "project"):
        f"test: {LSP}::test_without_the_grant_the_stage_fails_naming_the_permission",
    ("project", "custom:releasePreflightReader", "runtime", "project"):
        f"test: {LSP}::test_without_the_grant_the_stage_fails_naming_the_permission",
    ("service-account", "roles/iam.serviceAccountUser", "runtime", "pipeline"):
        f"test: {LSP}::test_without_the_grant_the_stage_fails_naming_the_permission",
    ("service-account", "roles/iam.serviceAccountUser", "runtime", "app"):
        f"test: {LSP}::test_without_the_grant_the_stage_fails_naming_the_permission",
    ("project", "custom:releaseCanaryReader", "runtime", "project"):
        f"test: {LSP}::test_the_canary_analysis_reads_through_the_custom_role_only",
    ("project", "roles/artifactregistry.writer", "pipeline", "project"):
        f"test: {LSP}::test_without_artifact_registry_writer_the_build_cannot_push",
    ("tasks-queue", "roles/cloudtasks.enqueuer", "runtime", "queue"):
        "test: tests/integration/test_iam_probe_queue.py::test_without_the_enqueuer_role_on_the_queue_scheduling_is_denied",
    ("service-account", "roles/iam.serviceAccountUser", "runtime", "invoker"):
        "test: tests/integration/test_iam_probe_queue.py::"
        "test_without_act_as_on_the_invoker_account_a_task_with_its_token_is_denied",
    ("artifact-repository", "custom:releaseRegistryTagReader", "runtime", "release-repository"):
        "test: tests/integration/test_registry_grant.py::"
        "test_without_the_tag_reader_grant_a_rollback_from_the_registry_is_denied",
    ("secret", "roles/secretmanager.secretAccessor", "runtime", "function-secret"):
        "test: tests/integration/test_plan_bindings_enforced.py::"
        "test_a_function_reads_its_secrets_as_its_account_and_only_with_the_plans_binding",
    ("function", "roles/run.invoker", "invoker", "probe"):
        "test: tests/integration/test_plan_bindings_enforced.py::test_a_private_function_admits_exactly_the_plans_invokers",
    ("function", "roles/run.invoker", "operator", "operator"):
        "test: tests/integration/test_plan_bindings_enforced.py::test_a_private_function_admits_exactly_the_plans_invokers",
    ("build-connection", "roles/cloudbuild.readTokenAccessor", "pipeline", "connection"):
        "test: tests/integration/test_private_source.py::test_the_build_account_reads_the_connection_only_with_deploys_grant",
    ("run-service", "roles/run.invoker", "runtime", "checked-service"):
        "test: tests/integration/test_private_service_checks.py::test_without_the_invoker_grant_the_check_fails_naming_the_403",
    # No local path: the reason is in deploy/README.md under this key.
    ("function", "roles/run.invoker", "invoker", "event-function"): "readme: run.invoker (invoker, event functions)",
    ("project", "roles/datastore.user", "runtime", "project"): "readme: datastore.user (runtime)",
    ("topic", "roles/pubsub.publisher", "runtime", "topic"): "readme: pubsub.publisher (runtime, pubsub-agent)",
    ("topic", "roles/pubsub.publisher", "pubsub-agent", "topic"): "readme: pubsub.publisher (runtime, pubsub-agent)",
    ("subscription", "roles/pubsub.subscriber", "pubsub-agent", "subscription"): "readme: pubsub.subscriber (pubsub-agent)",
    ("service-account", "roles/iam.serviceAccountTokenCreator", "pubsub-agent", "invoker"):
        "readme: iam.serviceAccountTokenCreator (pubsub-agent)",
    ("service-account", "roles/iam.workloadIdentityUser", "wif", "pipeline"): "readme: iam.workloadIdentityUser (wif)",
    ("secret", "roles/secretmanager.secretAccessor", "pipeline", "pipeline-secret"):
        "readme: secretmanager.secretAccessor (pipeline)",
    **{("project", role, "pipeline", "project"): "readme: seed roles (pipeline)" for role in (
        "roles/run.admin", "roles/run.developer", "roles/cloudsql.client", "roles/cloudsql.editor",
        "roles/redis.admin", "roles/compute.networkUser")},
    ("project", "roles/logging.logWriter", "pipeline", "project"): "readme: logging.logWriter (pipeline, builder)",
    ("project", "roles/logging.logWriter", "builder", "project"): "readme: logging.logWriter (pipeline, builder)",
    ("project", "roles/storage.objectViewer", "builder", "project"): "readme: builder roles (builder)",
    ("artifact-repository", "roles/artifactregistry.writer", "builder", "functions-repository"):
        "readme: builder roles (builder)",
    ("artifact-repository", "roles/artifactregistry.writer", "builder", "release-repository"):
        "readme: builder roles (builder)",
}


def binding_keys(config) -> set[tuple[str, str, str, str]]:
    plan = build_plan(config)
    principals = {sa_member(config.pipeline_sa): "pipeline", sa_member(config.runtime_sa): "runtime",
                  sa_member(config.invoker_sa): "invoker", sa_member(config.builder_sa): "builder"}
    accounts = {config.pipeline_sa: "pipeline", config.invoker_sa: "invoker",
                **{a: "app" for a in config.app_service_accounts}}
    function_secrets = {s for fn in functions(config) for _, s in fn.secrets}
    event_functions = {fn.name for fn in functions(config) if fn.trigger_topic}
    keys = set()
    for b in plan.bindings:
        principal = principals.get(b.member) or (
            "pubsub-agent" if "@gcp-sa-pubsub." in b.member else "wif" if b.member.startswith("principalSet:")
            else "operator" if b.member.startswith("user:") else b.member)
        target = {"project": "project", "topic": "topic", "subscription": "subscription", "tasks-queue": "queue"}.get(
            b.scope) or {"service-account": lambda: accounts.get(b.target, b.target),
                         "secret": lambda: "function-secret" if b.target in function_secrets else "pipeline-secret",
                         "function": lambda: "event-function" if b.target in event_functions else b.target,
                         "artifact-repository": lambda: "functions-repository" if b.target == "release-functions"
                         else "release-repository",
                         "build-connection": lambda: "connection",
                         "run-service": lambda: "checked-service"}[b.scope]()
        role = b.role.replace(f"projects/{config.project}/roles/", "custom:")
        keys.add((b.scope, role, principal, target))
    return keys


@pytest.mark.parametrize("pipeline", ["sample.yaml", "noesis2.yaml"])
def test_every_binding_has_a_test_that_removes_it_or_a_readme_reason(pipeline):
    config = load_config(dict(ENV, RELEASE_PIPELINE_FILE=str(REPO_ROOT / "pipelines" / pipeline),
                              RELEASE_OPERATORS="ops@example.com", DEPLOY_GITHUB_TOKEN_SECRET="release-github-token"))
    missing = binding_keys(config) - set(COVERAGE)
    assert not missing, f"bindings with neither a test that removes them nor a reason in deploy/README.md: {missing}"


def test_each_named_test_exists_and_each_reason_is_in_deploy_readme():
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    for key, where in COVERAGE.items():
        kind, _, ref = where.partition(": ")
        if kind == "readme":
            assert f"`{ref}`" in readme, (key, ref)
            continue
        path, _, name = ref.partition("::")
        tree = ast.parse(Path(REPO_ROOT / path).read_text())
        assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, (key, ref)
