"""The deploy plan, offline: least privilege, WIF restricted to one repository,
idempotent commands, no secret values, and the apply's describe-before-create."""
from __future__ import annotations

import io
import json
import re

import pytest
import yaml

from deploy.apply import Result, apply_plan
from deploy.config import DeployError, load_config, pipeline_account_id, setup_check
from deploy.model import build_plan, sa_member
from deploy.plan import main
from deploy.source import assemble_source
from shared.app.config import REPO_ROOT
from tests.seed import SEED_ROLES

WEBHOOK_VALUE = "whsec-do-not-print-3f9a1c"
KEYS_VALUE = "k1:approval-key-do-not-print-77e2"
ENV = {
    "RELEASE_PROJECT": "acme-release",
    "RELEASE_REGION": "europe-west3",
    "RELEASE_ARTIFACT_REGISTRY": "europe-west3-docker.pkg.dev/acme-release/noesis2",
    "DEPLOY_GITHUB_REPOSITORY": "acme/noesis2",
    "DEPLOY_GITHUB_REPOSITORY_ID": "123456789",
    "RELEASE_SMTP_HOST": "smtp.example.com",
    "RELEASE_SMTP_PORT": "587",
    "RELEASE_SMTP_USER": "release-bot",
    "RELEASE_MAIL_FROM": "release-bot@example.com",
    "DEPLOY_APP_SERVICE_ACCOUNTS": "noesis2-app@acme-release.iam.gserviceaccount.com",
    # Present in the operator's shell by mistake: must never reach the output.
    "RELEASE_WEBHOOK_SECRET": WEBHOOK_VALUE,
    "RELEASE_APPROVAL_KEYS": KEYS_VALUE,
    "RELEASE_SLACK_WEBHOOK_URL": "https://hooks.example.invalid/secret-path-5d1",
}
PIPELINE_SA = "noesis2-pipeline@acme-release.iam.gserviceaccount.com"  # named by the preflight stage


def dry_run_json(monkeypatch, env=ENV, *extra: str) -> dict:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    assert main(["--dry-run", "--json", *extra], out=out) == 0
    return json.loads(out.getvalue())


def pipeline_sa_roles(plan_json: dict, scope: str) -> set[str]:
    return {s["role"] for s in plan_json["steps"]
            if s["type"] == "binding" and s["member"] == sa_member(PIPELINE_SA) and s["scope"] == scope}


def test_pipeline_account_gets_exactly_the_seeds_roles(monkeypatch):
    plan = dry_run_json(monkeypatch)
    project_roles = pipeline_sa_roles(plan, "project")
    secret_roles = pipeline_sa_roles(plan, "secret")
    # The seed's roles, and the log writer a build running as a user-specified account needs.
    assert project_roles | secret_roles == SEED_ROLES | {"roles/logging.logWriter"}
    # The accessor is never project-wide.
    assert "roles/secretmanager.secretAccessor" not in project_roles
    sa_roles = {s["role"] for s in plan["steps"] if s["type"] == "binding" and s["target"] == PIPELINE_SA}
    assert sa_roles == {"roles/iam.workloadIdentityUser", "roles/iam.serviceAccountUser"}


def test_secret_accessor_is_bound_only_on_the_secrets_stages_read(monkeypatch):
    plan = dry_run_json(monkeypatch)
    secret_targets = {s["target"] for s in plan["steps"] if s["type"] == "binding"
                      and s["member"] == sa_member(PIPELINE_SA) and s["role"] == "roles/secretmanager.secretAccessor"}
    # the prod stages' secrets, and the one the schema build fetches as the pipeline account
    assert secret_targets == {"noesis2-prod-database-url", "noesis2-schema-database-url"}


def test_no_secret_accessor_when_no_prod_stage_needs_secrets(monkeypatch, tmp_path):
    document = yaml.safe_load((REPO_ROOT / "pipelines" / "noesis2.yaml").read_text())
    for stage in document["stages"]:
        stage.get("params", {}).pop("secrets", None)
        stage.get("params", {}).pop("available_secrets", None)
        for step in stage.get("params", {}).get("steps") or []:
            step.pop("secretEnv", None)
    modified = tmp_path / "no-secrets.yaml"
    modified.write_text(yaml.safe_dump(document))
    plan = dry_run_json(monkeypatch, ENV, "--pipeline-file", str(modified))
    assert pipeline_sa_roles(plan, "project") | pipeline_sa_roles(plan, "secret") == \
        (SEED_ROLES - {"roles/secretmanager.secretAccessor"}) | {"roles/logging.logWriter"}
    assert pipeline_sa_roles(plan, "secret") == set()


def test_a_second_prod_secret_gets_its_own_resource_level_binding(monkeypatch, tmp_path):
    document = yaml.safe_load((REPO_ROOT / "pipelines" / "noesis2.yaml").read_text())
    prod_deploy = next(s for s in document["stages"] if s["id"] == "prod-deploy")
    prod_deploy["params"]["secrets"] = {"REDIS_URL": "noesis2-prod-redis-url:latest"}
    modified = tmp_path / "two-secrets.yaml"
    modified.write_text(yaml.safe_dump(document))
    plan = dry_run_json(monkeypatch, ENV, "--pipeline-file", str(modified))
    targets = {s["target"] for s in plan["steps"] if s["type"] == "binding"
               and s["member"] == sa_member(PIPELINE_SA) and s["scope"] == "secret"}
    assert targets == {"noesis2-prod-database-url", "noesis2-prod-redis-url", "noesis2-schema-database-url"}


def _provider_flag(plan: dict, flag: str) -> str:
    provider = next(s for s in plan["steps"] if s["type"] == "resource" and s["kind"] == "wif-provider")
    return next(a for a in provider["create"] if a.startswith(f"--{flag}=")).split("=", 1)[1]


def _mapping(flag: str) -> dict[str, str]:
    # gcloud's --attribute-mapping: KEY=VALUE pairs separated by commas (so no expression may hold one)
    return dict(pair.split("=", 1) for pair in flag.split(","))


def test_wif_admits_only_the_release_workflow_of_the_release_branch(monkeypatch):
    """Issue 23: the condition pinned the repository id only, so every branch's workflow was admitted."""
    from deploy.wif import evaluate, github_claims, strangers

    plan = dry_run_json(monkeypatch)
    condition, mapping = _provider_flag(plan, "attribute-condition"), _mapping(_provider_flag(plan, "attribute-mapping"))
    policy = load_config(ENV).wif_policy
    assert evaluate(condition, github_claims(policy)) is True
    members = {s["member"] for s in plan["steps"] if s["type"] == "binding" and s["role"] == "roles/iam.workloadIdentityUser"}
    assert members == {"principalSet://iam.googleapis.com/projects/${PROJECT_NUMBER}/locations/global/"
                       "workloadIdentityPools/github/attribute.release_workflow/123456789:branch:.github/workflows/release.yml"}
    bound = {m.rsplit("/attribute.release_workflow/", 1)[1] for m in members}
    assert evaluate(mapping["attribute.release_workflow"], github_claims(policy)) in bound
    for what, claims in strangers(policy).items():
        # refused twice: by the provider, and by the principal set should the condition ever be loosened
        assert evaluate(condition, claims) is False, what
        if claims["repository_id"] == policy.repository_id:
            assert evaluate(mapping["attribute.release_workflow"], claims) not in bound, what


def test_wif_release_tags_and_workflows_are_configurable(monkeypatch):
    from deploy.wif import evaluate, github_claims

    env = {**ENV, "DEPLOY_WIF_TAG_PREFIX": "v",
           "DEPLOY_WIF_WORKFLOWS": ".github/workflows/release.yml,.github/workflows/hotfix.yaml"}
    plan = dry_run_json(monkeypatch, env)
    condition = _provider_flag(plan, "attribute-condition")
    policy = load_config(env).wif_policy
    assert evaluate(condition, github_claims(policy, ref="refs/tags/v1.2.3")) is True
    assert evaluate(condition, github_claims(policy, workflow=".github/workflows/hotfix.yaml")) is True
    assert evaluate(condition, github_claims(policy, ref="refs/tags/nightly")) is False
    assert evaluate(condition, github_claims(policy, workflow=".github/workflows/ci.yml")) is False
    assert len([s for s in plan["steps"] if s["type"] == "binding" and s["role"] == "roles/iam.workloadIdentityUser"]) == 4


@pytest.mark.parametrize("condition, refused", [
    ("assertion.repository_id == '123456789'", "admits a feature branch"),
    ("assertion.repository_id == '123456789' && assertion.ref == 'refs/heads/main'", "admits another workflow file"),
    ("assertion.repository_id == '123456789' && assertion.ref == 'refs/heads/main' && "
     "assertion.workflow_ref == 'acme/noesis2/.github/workflows/release.yml@refs/heads/main'",
     "admits pull_request_target on the release branch"),
    ("assertion.repository == 'acme/noesis2' && assertion.ref == 'refs/heads/main'",
     "admits another repository of the same name"),
])
def test_check_refuses_a_condition_that_does_not_pin_branch_workflow_and_event(condition, refused):
    findings = setup_check(load_config({**ENV, "DEPLOY_WIF_CONDITION": condition}))
    assert any(f.level == "error" and refused in f.message for f in findings), findings
    assert not [f for f in setup_check(load_config(ENV)) if "WIF" in f.message]


def test_plan_is_deterministic_so_running_it_twice_yields_the_same_commands():
    config = load_config(ENV)
    first, second = build_plan(config), build_plan(load_config(dict(ENV)))
    assert first.commands() == second.commands()
    assert first == second


def test_every_create_is_preceded_by_a_describe_and_bindings_use_add(monkeypatch):
    plan = build_plan(load_config(ENV))
    for resource in plan.resources:
        assert "describe" in resource.describe
        assert {"create", "create-oidc"} & set(resource.create)
    for binding in plan.bindings:
        assert any(word in binding.command for word in ("add-iam-policy-binding", "add-invoker-policy-binding"))
    created = [" ".join(c) for c in plan.commands() if "create" in c or "create-oidc" in c]
    assert len(created) == len(plan.resources)


def test_dry_run_output_contains_no_secret_values(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for args in (["--dry-run"], ["--dry-run", "--json"], ["--check"]):
        out = io.StringIO()
        main(args, out=out)
        text = out.getvalue()
        assert text, args
        for value in (WEBHOOK_VALUE, KEYS_VALUE, "secret-path-5d1", "approval-key-do-not-print"):
            assert value not in text, (args, value)
    # The functions get secrets as references only.
    plan = dry_run_json(monkeypatch)
    deploys = [s for s in plan["steps"] if s["type"] == "action" and s["kind"] == "function"]
    on_push = next(d for d in deploys if d["name"] == "on-push")
    assert "--set-secrets=RELEASE_WEBHOOK_SECRET=release-webhook-secret:latest" in on_push["command"]


def test_functions_triggers_and_retry(monkeypatch):
    plan = dry_run_json(monkeypatch)
    deploys = {s["name"]: s["command"] for s in plan["steps"] if s["type"] == "action" and s["kind"] == "function"}
    assert set(deploys) == {"on-push", "dispatch", "dispatch-builds", "on-approval", "sweep", "dashboard", "operator",
                            "drain-dead-letters", "probe"}
    drain = deploys["drain-dead-letters"]
    assert "--trigger-topic=pipeline-dead-letter" in drain and "--entry-point=drain_dead_letters" in drain
    assert "--retry" in drain
    assert "--no-allow-unauthenticated" in deploys["operator"] and not any(
        a.startswith("--set-secrets") for a in deploys["operator"])
    assert "--no-allow-unauthenticated" in deploys["probe"] and "--trigger-http" in deploys["probe"]
    assert "--trigger-topic=pipeline-events" in deploys["dispatch"] and "--retry" in deploys["dispatch"]
    assert "--trigger-topic=cloud-builds" in deploys["dispatch-builds"] and "--retry" in deploys["dispatch-builds"]
    assert "--entry-point=dispatch" in deploys["dispatch-builds"]
    assert "--trigger-topic=pipeline-tick" in deploys["sweep"] and "--retry" not in deploys["sweep"]
    assert "--allow-unauthenticated" in deploys["on-push"] and "--no-allow-unauthenticated" in deploys["dashboard"]
    for command in deploys.values():
        assert "--service-account=release-runtime@acme-release.iam.gserviceaccount.com" in command
        env = next(a for a in command if a.startswith("--set-env-vars="))
        assert "ENDPOINT" not in env  # the stand-in endpoints never reach GCP
    scheduler = next(s for s in plan["steps"] if s["type"] == "resource" and s["kind"] == "scheduler-job")
    assert "--schedule=* * * * *" in scheduler["create"] and "--topic=pipeline-tick" in scheduler["create"]
    policies = [s for s in plan["steps"] if s["type"] == "action" and s["kind"] == "subscription-policy"]
    dead_letter = [s for s in policies if any(a.startswith("--dead-letter-topic") for a in s["command"])]
    assert {s["name"] for s in dead_letter} == {"${SUBSCRIPTION:dispatch}", "${SUBSCRIPTION:dispatch-builds}"}
    assert all("--dead-letter-topic=pipeline-dead-letter" in s["command"] for s in dead_letter)


def test_only_listed_operators_may_invoke_the_operator_function(monkeypatch):
    plan = dry_run_json(monkeypatch, {**ENV, "RELEASE_OPERATORS": "Ops@Example.com,qa@example.com"})
    invokers = {s["member"] for s in plan["steps"]
                if s["type"] == "binding" and s["target"] == "operator" and s["role"] == "roles/run.invoker"}
    assert invokers == {"user:ops@example.com", "user:qa@example.com"}
    deploy = next(s["command"] for s in plan["steps"] if s["type"] == "action" and s["name"] == "operator")
    env = next(a for a in deploy if a.startswith("--set-env-vars="))
    assert "RELEASE_OPERATORS=ops@example.com;qa@example.com" in env
    assert "RELEASE_OPERATOR_AUDIENCE=https://europe-west3-acme-release.cloudfunctions.net/operator" in env


def test_runtime_account_roles_are_the_documented_ones(monkeypatch):
    plan = build_plan(load_config(ENV))
    runtime = sa_member("release-runtime@acme-release.iam.gserviceaccount.com")
    assert plan.roles_of(runtime, "project") == {
        "roles/datastore.user", "roles/cloudbuild.builds.editor", "roles/run.developer",
        "projects/acme-release/roles/releasePreflightReader", "projects/acme-release/roles/releaseCanaryReader"}
    assert plan.roles_of(runtime, "topic") == {"roles/pubsub.publisher"}
    assert plan.roles_of(runtime, "service-account") == {"roles/iam.serviceAccountUser"}
    act_as = {b.target for b in plan.bindings if b.member == runtime and b.scope == "service-account"}
    assert act_as == {PIPELINE_SA, "release-invoker@acme-release.iam.gserviceaccount.com",
                      "noesis2-app@acme-release.iam.gserviceaccount.com"}  # never the default compute account
    (canary,) = [r for r in plan.resources if r.name.endswith("/roles/releaseCanaryReader")]
    assert "--permissions=logging.logEntries.list,monitoring.timeSeries.list" in canary.create
    secret_targets = {b.target for b in plan.bindings if b.member == runtime and b.scope == "secret"}
    assert secret_targets == {"release-webhook-secret", "release-approval-keys", "release-smtp-password"}


class FakeCloud:
    """A tiny fake of gcloud: describe succeeds for what exists, create adds it."""

    def __init__(self, secrets_have_values: bool = True):
        self.existing: set[tuple[str, ...]] = set()
        self.calls: list[tuple[str, ...]] = []
        self.secrets_have_values = secrets_have_values

    @staticmethod
    def _key(args: tuple[str, ...]) -> tuple[str, ...]:
        verb = next(i for i, a in enumerate(args) if a in ("describe", "create", "create-oidc"))
        name = next((a for a in args[verb + 1:] if not a.startswith("--") and a != "pubsub"), "")
        return (*args[:verb], name.split("@")[0])  # service accounts: described by email, created by id

    def __call__(self, args: tuple[str, ...]) -> Result:
        self.calls.append(args)
        if args[:3] == ("projects", "describe", "acme-release"):
            return Result(0, "123456789012\n", "")
        if args[:2] == ("functions", "describe"):
            return Result(0, f"projects/acme-release/locations/europe-west3/triggers/{args[2]}-trg\n", "")
        if args[:3] == ("eventarc", "triggers", "describe"):
            return Result(0, f"projects/acme-release/subscriptions/eventarc-sub-{args[3]}\n", "")
        if args[:3] == ("secrets", "versions", "list"):
            return Result(0, "1\n" if self.secrets_have_values else "", "")
        if "describe" in args:
            return Result(0 if self._key(args) in self.existing else 1, "", "NOT_FOUND")
        if "create" in args or "create-oidc" in args:
            self.existing.add(self._key(args))
        return Result(0, "", "")


def test_apply_creates_once_and_a_second_apply_creates_nothing():
    config = load_config(ENV)
    plan = build_plan(config)
    cloud = FakeCloud()
    assembled = []
    first = apply_plan(plan, config, cloud, log=lambda line: None, before_functions=lambda: assembled.append(1))
    assert sum(line.startswith("created") for line in first) == len(plan.resources)
    assert assembled == [1]
    second = apply_plan(plan, config, cloud, log=lambda line: None)
    assert not any(line.startswith("created") for line in second)
    assert sum(line.startswith("exists") for line in second) == len(plan.resources)
    # Placeholders were filled from the project, never sent as-is.
    assert not any("${" in a for call in cloud.calls for a in call)
    assert any("serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com" in a
               for call in cloud.calls for a in call)
    assert any(call[:4] == ("pubsub", "subscriptions", "update", "eventarc-sub-dispatch-trg") for call in cloud.calls)


def test_apply_stops_before_its_first_step_naming_the_secrets_without_a_version():
    config = load_config(ENV)
    cloud = FakeCloud(secrets_have_values=False)
    with pytest.raises(DeployError, match="release-webhook-secret, release-approval-keys, release-smtp-password "
                                          "have no enabled version"):
        apply_plan(build_plan(config), config, cloud, log=lambda line: None)
    assert all(call[:3] == ("secrets", "versions", "list") for call in cloud.calls)  # nothing changed


def test_check_lists_the_secrets_that_must_hold_a_version_and_smtp_only_with_a_login(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    main(["--check"], out=out)
    listed = re.findall(r"^SECRET +(\S+)", out.getvalue(), re.M)
    assert listed == ["release-webhook-secret", "release-approval-keys", "release-smtp-password"]
    monkeypatch.setenv("RELEASE_SMTP_USER", "")
    out = io.StringIO()
    main(["--check"], out=out)
    assert "release-smtp-password" not in re.findall(r"^SECRET +(\S+)", out.getvalue(), re.M)
    plan = build_plan(load_config(dict(ENV, RELEASE_SMTP_USER="")))
    assert "release-smtp-password" not in " ".join(" ".join(c) for c in plan.commands())


def test_the_assembled_main_exports_every_entry_point_the_plan_deploys(tmp_path):
    from deploy.model import functions

    config = load_config(dict(ENV, DEPLOY_SOURCE_DIR=str(tmp_path / "src")))
    text = (assemble_source(config) / "main.py").read_text()
    exported = set(re.search(r"from functions.main import (.*?)  #", text).group(1).split(", "))
    assert exported == {fn.entry_point for fn in functions(config)} >= {"probe", "drain_dead_letters"}


def test_setup_check_names_what_to_fix():
    bad = dict(ENV, RELEASE_PROJECT="local-project", DEPLOY_GITHUB_REPOSITORY="not a repo",
               RELEASE_IAM_ENDPOINT="127.0.0.1:9999", RELEASE_ARTIFACT_REGISTRY="")
    messages = [f.message for f in setup_check(load_config(bad)) if f.level == "error"]
    assert any(m.startswith("RELEASE_PROJECT") for m in messages)
    assert any(m.startswith("DEPLOY_GITHUB_REPOSITORY") for m in messages)
    assert any(m.startswith("RELEASE_IAM_ENDPOINT") for m in messages)
    assert any(m.startswith("RELEASE_ARTIFACT_REGISTRY") for m in messages)
    good = [f for f in setup_check(load_config(ENV)) if f.level == "error" and "functions/main.py" not in f.message]
    assert good == []


@pytest.mark.parametrize("change, named", [
    ({"RELEASE_SMTP_HOST": ""}, "RELEASE_SMTP_HOST"),  # no approval link could ever be sent (finding 5)
    ({"RELEASE_SMTP_PORT": "25"}, "RELEASE_SMTP_PORT"),
    ({"RELEASE_MAIL_FROM": "release-bot@localhost"}, "RELEASE_MAIL_FROM"),
    ({"DEPLOY_GITHUB_REPOSITORY_ID": ""}, "DEPLOY_GITHUB_REPOSITORY_ID"),
])
def test_check_refuses_a_deployment_that_cannot_send_approval_links(change, named):
    errors = [f.message for f in setup_check(load_config(dict(ENV, **change))) if f.level == "error"]
    assert any(m.startswith(named) for m in errors), errors


def test_builds_have_their_own_account_region_and_push_subscriptions_wait_for_the_work(monkeypatch):
    plan = dry_run_json(monkeypatch, dict(ENV, RELEASE_BUILD_REGION="europe-west1"))
    commands = [c for step in plan["steps"] for c in ([step["command"]] if "command" in step else [])]
    builder = "projects/acme-release/serviceAccounts/release-builder@acme-release.iam.gserviceaccount.com"
    deploys = [c for c in commands if c[:2] == ["functions", "deploy"]]
    assert deploys and all(f"--build-service-account={builder}" in c for c in deploys)  # finding 6
    (submit,) = [c for c in commands if c[:2] == ["builds", "submit"]]
    assert f"--service-account={builder}" in submit and "--region=europe-west1" in submit  # finding 7
    updates = [c for c in commands if c[:3] == ["pubsub", "subscriptions", "update"]]
    assert len(updates) == 4 and all("--ack-deadline=600" in c for c in updates)  # finding 9: every trigger
    roles = {(s["member"], s["role"]) for s in plan["steps"] if s["type"] == "binding"}
    builder_member = "serviceAccount:release-builder@acme-release.iam.gserviceaccount.com"
    assert not any(role == "roles/cloudbuild.builds.builder" for _, role in roles)  # not project-wide any more
    builder = {(s["scope"], s["target"], s["role"]) for s in plan["steps"]
               if s["type"] == "binding" and s["member"] == builder_member}
    assert builder == {("project", "acme-release", "roles/logging.logWriter"),
                       ("project", "acme-release", "roles/storage.objectViewer"),
                       ("artifact-repository", "release-functions", "roles/artifactregistry.writer"),
                       ("artifact-repository", "noesis2", "roles/artifactregistry.writer")}
    assert all("--docker-repository=projects/acme-release/locations/europe-west3/repositories/release-functions" in c
               for c in deploys)
    steps = plan["steps"]
    first_deploy = min(i for i, st in enumerate(steps) if st.get("command", [])[:2] == ["functions", "deploy"])
    submit_at = next(i for i, st in enumerate(steps) if st.get("command", [])[:2] == ["builds", "submit"])
    granted = [i for i, st in enumerate(steps) if st["type"] == "binding" and st["member"] == builder_member]
    assert max(granted) < min(first_deploy, submit_at)  # every grant of the build account precedes its builds


def test_assembled_source_holds_the_packages_and_a_root_main(tmp_path):
    config = load_config(dict(ENV, DEPLOY_SOURCE_DIR=str(tmp_path / "src")))
    dest = assemble_source(config)
    for name in ("functions", "shared", "pipelines", "requirements.txt", "main.py"):
        assert (dest / name).exists(), name
    assert (dest / "pipelines" / "noesis2.yaml").exists()
    assert not list(dest.rglob("__pycache__"))
    assert re.search(r"^from functions\.main import .*on_push", (dest / "main.py").read_text(), re.M)
    with pytest.raises(ValueError):
        assemble_source(load_config(dict(ENV, DEPLOY_SOURCE_DIR=str(REPO_ROOT / "shared" / "x"))))


def test_pipeline_account_is_the_one_the_preflight_stage_checks(tmp_path):
    config = load_config(ENV)
    stage = config.pipeline.stage("preflight")
    assert stage.params["service_account"].replace("${project}", "acme-release") == config.pipeline_sa
    document = yaml.safe_load((REPO_ROOT / "pipelines" / "noesis2.yaml").read_text())
    document["stages"] = [s for s in document["stages"] if s["kind"] != "preflight"]
    from shared.domain.pipeline import parse_pipeline

    bare = parse_pipeline(document)
    assert pipeline_account_id(bare, "acme-release", {}) == "release-pipeline"
    assert pipeline_account_id(bare, "acme-release", {"RELEASE_PIPELINE_SERVICE_ACCOUNT": "x-pipe"}) == "x-pipe"
    with pytest.raises(Exception, match="not an account of project acme-release"):
        pipeline_account_id(bare, "acme-release",
                            {"RELEASE_PIPELINE_SERVICE_ACCOUNT": "x@other-project.iam.gserviceaccount.com"})


def test_probes_have_a_queue_only_the_functions_may_fill_and_only_the_invoker_may_deliver(monkeypatch):
    plan = build_plan(load_config(ENV))
    runtime = sa_member("release-runtime@acme-release.iam.gserviceaccount.com")
    invoker = sa_member("release-invoker@acme-release.iam.gserviceaccount.com")
    queue = next(r for r in plan.resources if r.kind == "tasks-queue")
    assert queue.name == "release-probes" and "--location=europe-west3" in queue.create
    assert plan.roles_of(runtime, "tasks-queue") == {"roles/cloudtasks.enqueuer"}
    assert "roles/cloudtasks.enqueuer" not in plan.roles_of(runtime, "project")
    assert {b.target for b in plan.bindings if b.member == invoker and b.role == "roles/run.invoker"} >= {"probe"}
    env = next(a for a in next(s for s in plan.actions if s.name == "dispatch").command if a.startswith("--set-env-vars="))
    assert "RELEASE_PROBE_SERVICE_ACCOUNT=release-invoker@acme-release.iam.gserviceaccount.com" in env
    assert "RELEASE_PROBE_URL=https://" in env


@pytest.mark.parametrize("accounts, problem", [
    ("", "DEPLOY_APP_SERVICE_ACCOUNTS is empty"),
    ("123456789012-compute@developer.gserviceaccount.com", "the project's default compute account"),
    ("web@acme-release.iam.gserviceaccount.com,987-compute@developer.gserviceaccount.com", "default compute account"),
    ("not-an-account", "is not a service account e-mail address"),
])
def test_check_requires_a_dedicated_app_service_account(accounts, problem):
    errors = [f.message for f in setup_check(load_config({**ENV, "DEPLOY_APP_SERVICE_ACCOUNTS": accounts}))
              if f.level == "error"]
    assert any(problem in m for m in errors), errors
    if not accounts:  # nothing is granted on the default compute account in its place
        plan = build_plan(load_config({**ENV, "DEPLOY_APP_SERVICE_ACCOUNTS": accounts}))
        assert not any("-compute@developer" in b.target or "-compute@developer" in b.member for b in plan.bindings)


def test_a_github_token_secret_is_read_by_the_approval_requesting_functions_only(monkeypatch):
    runtime = sa_member("release-runtime@acme-release.iam.gserviceaccount.com")

    def compare_wiring(plan):
        deploys = {s["name"]: s["command"] for s in plan["steps"] if s["type"] == "action" and s["kind"] == "function"}
        readers = {name for name, command in deploys.items()
                   if any(a.startswith("--set-secrets=") and "RELEASE_GITHUB_TOKEN=release-github-token:latest" in a
                          for a in command)}
        grants = [(s["member"], s["role"]) for s in plan["steps"]
                  if s["type"] == "binding" and s["target"] == "release-github-token"]
        created = [s for s in plan["steps"] if s["type"] == "resource" and s["name"] == "release-github-token"]
        return readers, grants, len(created)

    assert compare_wiring(dry_run_json(monkeypatch)) == (set(), [], 0)  # not named: nothing
    plan = dry_run_json(monkeypatch, {**ENV, "DEPLOY_GITHUB_TOKEN_SECRET": "release-github-token"})
    assert compare_wiring(plan) == ({"dispatch", "dispatch-builds", "sweep"},
                                    [(runtime, "roles/secretmanager.secretAccessor")], 1)


def test_the_pipeline_account_reads_the_connected_repository_on_its_connection_only(monkeypatch):
    """Issue 23: noesis2's builds fetch its private repository through a 2nd-gen connection."""
    plan = dry_run_json(monkeypatch)
    grants = [s for s in plan["steps"] if s["type"] == "binding" and s["scope"] == "build-connection"]
    assert [(g["target"], g["role"], g["member"]) for g in grants] == [
        ("projects/acme-release/locations/europe-west3/connections/github", "roles/cloudbuild.readTokenAccessor",
         sa_member(PIPELINE_SA))]
    assert grants[0]["command"][:4] == ["builds", "connections", "add-iam-policy-binding", "github"]
    assert "--region=europe-west3" in grants[0]["command"]


def test_private_checked_services_grant_run_invoker_to_the_runtime_account_only(monkeypatch, tmp_path):
    """Issue 23: a check with `auth: id_token` sends the probe function's (runtime account's) ID token."""
    document = yaml.safe_load((REPO_ROOT / "pipelines" / "noesis2.yaml").read_text())
    for stage in document["stages"]:
        if stage["id"] == "prod-smoke":
            stage["params"]["auth"] = "id_token"
    modified = tmp_path / "noesis2.yaml"
    modified.write_text(yaml.safe_dump(document))
    plan = dry_run_json(monkeypatch, ENV, "--pipeline-file", str(modified))
    grants = [(s["target"], s["role"], s["member"]) for s in plan["steps"]
              if s["type"] == "binding" and s["role"] == "roles/run.invoker" and s["scope"] == "run-service"]
    assert grants == [("noesis2-web", "roles/run.invoker", "serviceAccount:release-runtime@acme-release.iam.gserviceaccount.com")]
    assert not [s for s in dry_run_json(monkeypatch)["steps"] if s["type"] == "binding" and s["scope"] == "run-service"]


def test_the_github_app_secrets_reach_only_the_reporting_functions_and_only_the_runtime_account():
    from deploy.model import build_plan, functions

    config = _github_app_config()
    specs = {fn.name: dict(fn.secrets) for fn in functions(config)}
    reporting = {name for name, secrets in specs.items() if "RELEASE_GITHUB_APP_KEY" in secrets}
    assert reporting == {"dispatch", "dispatch-builds", "sweep"}
    assert all(specs[n]["RELEASE_GITHUB_APP_ID"] == "release-github-app-id" for n in reporting)
    plan = build_plan(config)
    for secret in ("release-github-app-id", "release-github-app-key"):
        bindings = [b for b in plan.bindings if b.scope == "secret" and b.target == secret]
        assert [(b.role, b.member) for b in bindings] == [("roles/secretmanager.secretAccessor",
                                                           sa_member(config.runtime_sa))]
        assert any(r.kind == "secret" and r.name == secret for r in plan.resources)
    assert not [b for b in build_plan(load_config(ENV)).bindings if "github-app" in b.target]


def _github_app_config():
    import dataclasses

    from deploy.config import load_config

    return dataclasses.replace(load_config(ENV), github_app_id_secret="release-github-app-id",
                               github_app_key_secret="release-github-app-key")
