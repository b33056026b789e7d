"""Settings: explicit arguments first, then the environment; parsed once, frozen.

On GCP the secrets (webhook secret, link-signing keys) reach the functions as
environment variables that Cloud Functions fills from Secret Manager, so the code
reads them the same way in both places and never logs them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from shared.domain.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    project: str = "local-project"
    region: str = "europe-west3"
    pipeline_file: str = str(REPO_ROOT / "pipelines" / "noesis2.yaml")
    # More pipeline files on_push may start, separated by ',' or ';' (gcloud's --set-env-vars
    # splits on ','); each lists the repositories it releases.
    pipeline_files: str = ""
    release_branch: str = "main"
    # Pub/Sub topics (short names; the publisher adds the project).
    events_topic: str = "pipeline-events"
    updates_topic: str = "release-updates"
    builds_topic: str = "cloud-builds"
    # Firestore collection prefix, so tests and the demo can share one emulator.
    collection_prefix: str = ""
    # Where executors find the APIs; empty means the public Google endpoints.
    cloud_build_endpoint: str = ""
    cloud_run_endpoint: str = ""
    iam_endpoint: str = ""
    artifact_registry_endpoint: str = ""
    logging_endpoint: str = ""  # Cloud Logging (canary analysis: the revision's logs)
    monitoring_endpoint: str = ""  # Cloud Monitoring (canary analysis: request count and latencies)
    cloud_tasks_endpoint: str = ""
    # Probes of running stages (shared/app/probing.py) travel as Cloud Tasks on this queue
    # to the probe function's URL, with an OIDC token of this service account on GCP.
    probe_queue: str = "release-probes"
    probe_url: str = ""
    probe_service_account: str = ""
    artifact_registry: str = ""  # e.g. europe-west3-docker.pkg.dev/PROJECT/noesis2
    pipeline_service_account: str = ""  # builds run as it and the preflight checks it (deploy/ creates it)
    # Cloud Build's region; empty means ``region``. Some projects may run builds in a few regions only.
    build_region: str = ""
    # Git URL the builds fetch the pushed commit from; empty means https://github.com/<repo>.git.
    source_url: str = ""
    approval_base_url: str = "http://127.0.0.1:8083"
    public_base_url: str = ""  # dashboard, shown in notifications
    webhook_secret: str = field(default="", repr=False)
    approval_keys: str = field(default="", repr=False)  # "kid:secret,kid2:secret2", newest first
    smtp_host: str = ""
    smtp_port: int = 25  # on GCP 25 is blocked for external destinations: use 587 (STARTTLS)
    smtp_user: str = ""  # with a login the mail goes over STARTTLS only
    smtp_password: str = field(default="", repr=False)  # from Secret Manager (deploy/: --set-secrets)
    mail_from: str = "release-bot@localhost"
    notify_emails: str = ""  # comma-separated: who gets failure / approval / finished notices by mail
    slack_webhook_url: str = field(default="", repr=False)
    chat_webhook_url: str = field(default="", repr=False)
    outbox_lease_s: int = 60
    # GitHub's compare API for the approval page (shared/app/compare.py): a token that may read
    # the repositories' contents; empty means the push's own commits and a compare link.
    github_token: str = field(default="", repr=False)  # from Secret Manager (deploy/: --set-secrets)
    github_api_url: str = "https://api.github.com"
    # GitHub deployments and commit statuses (shared/app/github_reporting.py), as a GitHub App: its id
    # and private key (PEM), both from Secret Manager; empty: nothing is reported. Repositories to report
    # on (comma-separated owner/name); empty: every repository the App is installed on.
    github_app_id: str = field(default="", repr=False)
    github_app_key: str = field(default="", repr=False)
    github_report_repositories: str = ""
    # The operator function (shared/app/operator.py): who may call it and how tokens are checked.
    operator_url: str = ""  # where relctl sends operator requests
    operator_audience: str = ""  # the audience ID tokens must name (the function's URL on GCP)
    operator_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    operator_issuers: str = "https://accounts.google.com,accounts.google.com"
    operators: str = ""  # comma-separated e-mail addresses allowed to call it
    operator_token_url: str = ""  # local stack only: its token issuer's mint endpoint, for relctl
    people: str = ""  # "github-login=person@example.com,alias@x=person@example.com"
    # Checks of private services send an ID token of the function's account (the metadata server on
    # GCP). Local stack only: its token issuer's mint endpoint and the account it mints for.
    id_token_url: str = ""
    id_token_account: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read ``RELEASE_<FIELD>`` variables (``RELEASE_PROJECT``, ``RELEASE_WEBHOOK_SECRET`` …)."""
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            key = f"RELEASE_{f.name.upper()}"
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif key in env:
                raw = env[key]
                if f.type in ("int", int):
                    try:
                        values[f.name] = int(raw)
                    except ValueError:
                        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
                else:
                    values[f.name] = raw
        if "project" not in values:
            project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT")
            if project:
                values["project"] = project
        return cls(**values)

    def pipeline_paths(self) -> list[str]:
        """Every pipeline file on_push knows: ``pipeline_file`` first, then ``pipeline_files``."""
        extra = [p.strip() for p in self.pipeline_files.replace(";", ",").split(",") if p.strip()]
        return list(dict.fromkeys([self.pipeline_file, *extra]))

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise ConfigError(f"setting RELEASE_{name.upper()} is required but empty")
        return value

    def collection(self, name: str) -> str:
        return f"{self.collection_prefix}{name}"
