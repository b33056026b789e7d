"""What the deploy plan is derived from: the orchestrator's Settings (RELEASE_* variables),
the pipeline file, and the few facts only the deploy needs (GitHub repository, names).

Explicit arguments first, then the environment (``DEPLOY_*``), then defaults; parsed once
into a frozen object. Secret values in the environment are never read from here: the
functions get secrets as Secret Manager references only.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from deploy.wif import DEFAULT_WORKFLOWS, WifPolicy, condition_findings
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ConfigError, PipelineError
from shared.domain.pipeline import Pipeline, load_pipeline
from shared.domain.preflight import pipeline_account, prod_secret_names

PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
GITHUB_REPOSITORY = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$")
SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
PROJECT_NUMBER = re.compile(r"^\d{6,20}$")
DEFAULT_COMPUTE = re.compile(r"^\d+-compute@developer\.gserviceaccount\.com$")
SERVICE_ACCOUNT = re.compile(r"^[a-z0-9-]+@[a-z0-9.-]+\.gserviceaccount\.com$")
DEFAULT_PIPELINE_SA_ID = "release-pipeline"


def pipeline_account_id(pipeline: Pipeline, project: str, env: Mapping[str, str]) -> str:
    """The pipeline account the preflight stage will check, so the deploy creates exactly
    that one: the stage's ``service_account`` first, then RELEASE_PIPELINE_SERVICE_ACCOUNT,
    then ``release-pipeline``. Only an account of this project can be created here."""
    named = pipeline_account(pipeline, env.get("RELEASE_PIPELINE_SERVICE_ACCOUNT", ""))
    if not named:
        return DEFAULT_PIPELINE_SA_ID
    email = named.strip().replace("${project}", project)
    account_id, _, domain = email.partition("@")
    if domain and domain != f"{project}.iam.gserviceaccount.com":
        raise ConfigError(f"pipeline service account {email} is not an account of project {project}")
    return account_id


@dataclass(frozen=True)
class DeployConfig:
    settings: Settings
    pipeline: Pipeline
    github_repository: str  # "owner/name": the only repository WIF lets in
    project_number: str = ""  # unknown offline: the dry-run shows ${PROJECT_NUMBER}
    pipeline_sa_id: str = DEFAULT_PIPELINE_SA_ID  # see pipeline_account_id()
    runtime_sa_id: str = "release-runtime"
    invoker_sa_id: str = "release-invoker"
    builder_sa_id: str = "release-builder"
    github_repository_id: str = ""  # GitHub's numeric id: WIF matches it (a name can be renamed or re-created)
    smtp_password_secret: str = "release-smtp-password"
    wif_pool: str = "github"
    wif_provider: str = "github-oidc"
    # Who may act as the pipeline account through WIF (deploy/wif.py): these workflow files, on the
    # release branch (and tags starting with wif_tag_prefix, if set). DEPLOY_WIF_WORKFLOWS,
    # DEPLOY_WIF_TAG_PREFIX; DEPLOY_WIF_CONDITION replaces the generated condition, and --check
    # refuses one that does not pin ref, workflow and event as well as the repository id.
    wif_workflows: tuple[str, ...] = DEFAULT_WORKFLOWS
    wif_tag_prefix: str = ""
    wif_condition: str = ""
    webhook_secret: str = "release-webhook-secret"
    approval_keys_secret: str = "release-approval-keys"
    # The GitHub token for the approval page's compare (RELEASE_GITHUB_TOKEN); "" (the default):
    # no secret, no grant, the page shows the push's own commits. DEPLOY_GITHUB_TOKEN_SECRET names it.
    github_token_secret: str = ""
    # The GitHub App that reports deployments and commit statuses (RELEASE_GITHUB_APP_ID and
    # RELEASE_GITHUB_APP_KEY, from these secrets); "" (the default): nothing is reported.
    # DEPLOY_GITHUB_APP_ID_SECRET and DEPLOY_GITHUB_APP_KEY_SECRET name them.
    github_app_id_secret: str = ""
    github_app_key_secret: str = ""
    tick_topic: str = "pipeline-tick"
    dead_letter_topic: str = "pipeline-dead-letter"
    scheduler_job: str = "pipeline-tick"
    source_dir: str = str(REPO_ROOT / "build" / "function-source")
    # Accounts the app's Cloud Run services and jobs run as (deploying needs actAs on each). They must
    # be dedicated accounts: --check refuses none, and refuses the project's default compute account.
    app_service_account_list: tuple[str, ...] = ()

    @property
    def app_service_accounts(self) -> tuple[str, ...]:
        return self.app_service_account_list

    @property
    def project(self) -> str:
        return self.settings.project

    @property
    def wif_policy(self) -> WifPolicy:
        return WifPolicy(self.github_repository, self.github_repository_id, self.settings.release_branch,
                         self.wif_workflows, self.wif_tag_prefix)

    @property
    def wif_attribute_condition(self) -> str:
        return self.wif_condition or self.wif_policy.attribute_condition()

    @property
    def region(self) -> str:
        return self.settings.region

    def sa_email(self, account_id: str) -> str:
        return f"{account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def pipeline_sa(self) -> str:
        return self.sa_email(self.pipeline_sa_id)

    @property
    def runtime_sa(self) -> str:
        return self.sa_email(self.runtime_sa_id)

    @property
    def builder_sa(self) -> str:
        return self.sa_email(self.builder_sa_id)

    @property
    def build_region(self) -> str:
        return self.settings.build_region or self.settings.region

    @property
    def invoker_sa(self) -> str:
        return self.sa_email(self.invoker_sa_id)

    @property
    def number(self) -> str:
        return self.project_number or "${PROJECT_NUMBER}"

    def function_url(self, name: str) -> str:
        # Gen2 functions keep the deterministic cloudfunctions.net address, so URLs that
        # functions put into links are known before anything is deployed.
        return f"https://{self.region}-{self.project}.cloudfunctions.net/{name}"


def load_config(
    env: Mapping[str, str] | None = None,
    *,
    project: str | None = None,
    region: str | None = None,
    github_repository: str | None = None,
    project_number: str | None = None,
    pipeline_file: str | None = None,
    source_dir: str | None = None,
) -> DeployConfig:
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (("project", project), ("region", region), ("pipeline_file", pipeline_file)) if v}
    settings = Settings.from_env(env, **overrides)
    extra = {}
    if source_dir or env.get("DEPLOY_SOURCE_DIR"):
        extra["source_dir"] = source_dir or env["DEPLOY_SOURCE_DIR"]
    pipeline = load_pipeline(settings.pipeline_file)
    return DeployConfig(
        settings=settings,
        pipeline=pipeline,
        pipeline_sa_id=pipeline_account_id(pipeline, settings.project, env),
        github_repository=github_repository or env.get("DEPLOY_GITHUB_REPOSITORY", ""),
        github_repository_id=env.get("DEPLOY_GITHUB_REPOSITORY_ID", ""),
        project_number=project_number or env.get("DEPLOY_PROJECT_NUMBER", ""),
        github_token_secret=env.get("DEPLOY_GITHUB_TOKEN_SECRET", "").strip(),
        github_app_id_secret=env.get("DEPLOY_GITHUB_APP_ID_SECRET", "").strip(),
        github_app_key_secret=env.get("DEPLOY_GITHUB_APP_KEY_SECRET", "").strip(),
        app_service_account_list=tuple(a.strip() for a in env.get("DEPLOY_APP_SERVICE_ACCOUNTS", "").split(",")
                                       if a.strip()),
        wif_workflows=tuple(w.strip() for w in env.get("DEPLOY_WIF_WORKFLOWS", "").split(",") if w.strip())
        or DEFAULT_WORKFLOWS,
        wif_tag_prefix=env.get("DEPLOY_WIF_TAG_PREFIX", "").strip(),
        wif_condition=env.get("DEPLOY_WIF_CONDITION", "").strip(),
        **extra,
    )


@dataclass(frozen=True)
class Finding:
    level: str  # "error" blocks --apply; "warning" does not
    message: str


def setup_check(config: DeployConfig, repo_root: Path = REPO_ROOT) -> list[Finding]:
    """Validate the config before anything is deployed (like cloud-build-notifiers' --setup_check).

    Messages name the variable or file to fix and never echo a secret value."""
    findings: list[Finding] = []

    def error(message: str) -> None:
        findings.append(Finding("error", message))

    def warning(message: str) -> None:
        findings.append(Finding("warning", message))

    s = config.settings
    if not PROJECT_ID.match(s.project) or s.project == Settings().project:
        error(f"RELEASE_PROJECT {s.project!r} is not a real GCP project id (6-30 chars, a-z 0-9 -)")
    if not REGION.match(s.region):
        error(f"RELEASE_REGION {s.region!r} does not look like a region (e.g. europe-west3)")
    if not GITHUB_REPOSITORY.match(config.github_repository):
        error("DEPLOY_GITHUB_REPOSITORY (or --github-repo) must be 'owner/name'; WIF admits only that repository")
    if not config.github_repository_id.isdigit():
        error("DEPLOY_GITHUB_REPOSITORY_ID must be the repository's numeric id (gh api repos/OWNER/NAME --jq .id): "
              "WIF matches assertion.repository_id, which a renamed or re-created repository cannot take over")
    if bool(config.github_app_id_secret) != bool(config.github_app_key_secret):
        error("DEPLOY_GITHUB_APP_ID_SECRET and DEPLOY_GITHUB_APP_KEY_SECRET go together: name both secrets of the "
              "GitHub App (its id and its private key) or neither")
    if GITHUB_REPOSITORY.match(config.github_repository) and config.github_repository_id.isdigit():
        try:
            wrong = condition_findings(config.wif_attribute_condition, config.wif_policy)
        except ConfigError as exc:
            error(str(exc))
        else:
            for finding in wrong:
                error(f"the WIF attribute condition {finding}: only the release workflow(s) of the release branch "
                      "(and release tags, if configured) may act as the pipeline account, which deploys to prod; "
                      "see deploy/wif.py and DEPLOY_WIF_CONDITION")
    # No approval link is ever sent without a mail relay: the release would wait 24 h for nothing.
    if not s.smtp_host:
        error("RELEASE_SMTP_HOST is empty: approval links go by mail only, so no release could reach prod")
    elif s.smtp_port == 25:
        error("RELEASE_SMTP_PORT is 25, which GCP blocks for external destinations: use the relay's 587 (STARTTLS)")
    elif not s.smtp_user:
        warning("RELEASE_SMTP_USER is empty: mail is sent without a login (only a relay that trusts the project "
                f"accepts that); no password is mounted, and {config.smtp_password_secret} is neither created nor read")
    if s.mail_from.endswith("@localhost"):
        error(f"RELEASE_MAIL_FROM {s.mail_from!r} is not an address a relay will send from")
    # https://cloud.google.com/run/docs/securing/service-identity: the default compute account "has the
    # Editor role, which grants broad access"; Google recommends a user-managed account per service.
    if not config.app_service_account_list:
        error("DEPLOY_APP_SERVICE_ACCOUNTS is empty: name the dedicated account(s) the app's Cloud Run services "
              "run as (e.g. noesis2-app@PROJECT.iam.gserviceaccount.com); without one they would run as the "
              "project's default compute account, which holds Editor on the project, and the functions would "
              "need actAs on it")
    for account in config.app_service_account_list:
        if DEFAULT_COMPUTE.match(account):
            error(f"DEPLOY_APP_SERVICE_ACCOUNTS names {account}, the project's default compute account (Editor on "
                  "the project): create a dedicated account for the app's services and name that instead")
        elif not SERVICE_ACCOUNT.match(account):
            error(f"DEPLOY_APP_SERVICE_ACCOUNTS: {account!r} is not a service account e-mail address")
    if config.project_number and not PROJECT_NUMBER.match(config.project_number):
        error(f"DEPLOY_PROJECT_NUMBER {config.project_number!r} is not a project number (digits only)")
    for name in ("cloud_build_endpoint", "cloud_run_endpoint", "iam_endpoint", "id_token_url"):
        if getattr(s, name):
            error(f"RELEASE_{name.upper()} is set: on GCP the functions must use the public Google APIs; unset it")
    if not s.artifact_registry:
        error("RELEASE_ARTIFACT_REGISTRY is empty (e.g. europe-west3-docker.pkg.dev/PROJECT/noesis2)")
    elif not re.match(rf"^[a-z0-9-]+-docker\.pkg\.dev/{re.escape(s.project)}/[a-z0-9-]+$", s.artifact_registry):
        error(f"RELEASE_ARTIFACT_REGISTRY {s.artifact_registry!r} must be REGION-docker.pkg.dev/{s.project}/REPOSITORY")
    for value_name in ("release_branch", "events_topic", "updates_topic", "builds_topic", "mail_from", "smtp_host"):
        if "," in str(getattr(s, value_name)):
            error(f"RELEASE_{value_name.upper()} contains a comma, which gcloud --set-env-vars cannot carry")
    for secret in prod_secret_names(config.pipeline):
        if not SECRET_ID.match(secret):
            error(f"pipeline {config.pipeline.name}: prod secret {secret!r} is not a valid Secret Manager id")
    if not Path(s.pipeline_file).resolve().is_relative_to(repo_root.resolve()):
        warning(f"RELEASE_PIPELINE_FILE {s.pipeline_file} lies outside the repository; it is copied into the source")
    main = repo_root / "functions" / "main.py"
    if not main.exists():
        error(f"{main} is missing: the functions' entry points live there")
    else:
        from deploy.model import entry_points  # the plan's functions name them

        text = main.read_text()
        for entry in entry_points(config):
            if not re.search(rf"^(def {entry}\(|{entry}\s*=)", text, re.M):
                error(f"{main}: entry point {entry}() not found")
    if not (repo_root / "requirements.txt").exists():
        error(f"{repo_root / 'requirements.txt'} is missing")
    if s.webhook_secret or s.approval_keys:
        warning("RELEASE_WEBHOOK_SECRET / RELEASE_APPROVAL_KEYS are set in this shell; the deploy never reads "
                "them - add the values with 'gcloud secrets versions add' (see deploy/README.md)")
    if shutil.which("gcloud") is None:
        warning("gcloud is not on PATH: --dry-run and --check work, --apply does not")
    return findings


class DeployError(PipelineError):
    """A deploy step failed; the message names the step and the gcloud command."""
