"""Stage kind ``preflight``: check the pipeline service account's roles before a release.

The check is one read of IAM policies, so ``start`` finishes the stage at once and
``poll`` has nothing to observe. A missing role fails the stage naming the role and the
account; roles beyond the seed's set pass with warnings in the stage result.

``params.service_account`` is an email (``${project}`` is filled in), or an account id
that is completed with the project (``noesis2-pipeline`` ->
``noesis2-pipeline@<project>.iam.gserviceaccount.com``), so one pipeline file works in
every project. The deploy plan creates the account this stage names.
"""
from __future__ import annotations

from typing import Any, Callable

from google.auth.exceptions import GoogleAuthError

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller
from shared.domain.pipeline import Pipeline, Stage
from shared.app.ports import StageFinish, StartResult
from shared.domain.iam_roles import ACT_AS
from shared.domain.preflight import (
    SECRET_ACCESSOR_ROLE, check_permissions, deployed_services, format_report, required_roles,
)
from shared.domain.state import StageState
from shared.adapters import gcp_clients


def service_account_email(value: str, project: str) -> str:
    """Fill ``${project}`` (not one of the release placeholders: the account belongs to the
    project, not to a release) and complete a bare account id into an email."""
    value = str(value).strip().replace("${project}", project)
    return value if "@" in value else f"{value}@{project}.iam.gserviceaccount.com"


class PreflightExecutor:
    """``StageExecutor`` for ``kind: preflight``.

    ``projects_client`` defaults to ``shared.adapters.gcp_clients.projects(settings)`` (the stand-in
    when ``settings.iam_endpoint`` is set). With a Secret Manager client (injected, made by
    ``secrets_client_factory``, or the default on GCP) a secret accessor granted per secret
    counts; without one only a project-wide grant does.
    Clients are built on first use so constructing the executor costs nothing.
    """

    def __init__(
        self,
        settings: Settings,
        projects_client: Any = None,
        secrets_client: Any = None,
        caller: ApiCaller | None = None,
        secrets_client_factory: Callable[[], Any] | None = None,
        iam_client: Any = None,
        services_client: Any = None,
    ):
        self._iam = iam_client
        self._services = services_client
        self._settings = settings
        self._projects = projects_client
        self._secrets = secrets_client
        self._secrets_factory = secrets_client_factory
        self._caller = caller or ApiCaller()

    def _projects_client(self) -> Any:
        if self._projects is None:
            self._projects = gcp_clients.projects(self._settings)
        return self._projects

    def _secrets_client(self, pipeline: Pipeline) -> Any:
        """Secret Manager is only asked when a prod stage reads secrets. On GCP (no
        ``iam_endpoint``) the real client is the default, because the deploy grants the
        accessor per secret; the stand-in serves no Secret Manager, so there only a
        project-wide grant counts."""
        if self._secrets is None and SECRET_ACCESSOR_ROLE in required_roles(pipeline):
            factory = self._secrets_factory
            if factory is None and not self._settings.iam_endpoint:
                factory = secret_manager_client
            if factory is not None:
                self._secrets = factory()
        return self._secrets

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        project = str(stage.params.get("project") or self._settings.project)
        account = service_account_email(stage.params["service_account"], project)
        try:
            projects_client, secrets_client = self._projects_client(), self._secrets_client(pipeline)
        except GoogleAuthError as exc:  # no credentials where the function runs: permanent
            raise ExecutorError(f"cannot build the IAM clients: {exc}", release_id=command.release_id,
                                stage=stage.id) from None
        report = self._caller.call(
            f"read IAM policy of project {project}",
            # retry=None: the caller's policy is the only retry, as in the other executors.
            lambda: check_permissions(projects_client, project, account, pipeline, secrets_client,
                                      {"retry": None, "timeout": self._caller.timeout}),
            release_id=command.release_id,
            stage=stage.id,
        )
        act_as_missing, act_as_notes = self._caller.call(
            "test actAs on the accounts builds and services run as",
            lambda: self._act_as(pipeline, project, account), release_id=command.release_id, stage=stage.id)
        report.notes.extend(act_as_notes)
        result = {
            "service_account": account,
            "act_as_missing": act_as_missing,
            "warnings": list(report.extra),  # roles beyond the seed's set
            "missing_roles": list(report.missing),
            "checked_roles": list(report.checked_roles),
            "notes": list(report.notes),
            "report": format_report(report),
        }
        if act_as_missing and report.ok:
            reason = f"the functions' account cannot act as {act_as_missing[0]} (missing {ACT_AS})"
            return StartResult(handle={"service_account": account}, finished=StageFinish(Outcome.FAILED, reason, result))
        if not report.ok:
            reason = report.first_failure
            if len(report.missing) > 1:
                reason += f" (and {len(report.missing) - 1} more: {', '.join(report.missing[1:])})"
            return StartResult(handle={"service_account": account},
                               finished=StageFinish(Outcome.FAILED, reason, result))
        return StartResult(handle={"service_account": account},
                           finished=StageFinish(Outcome.SUCCEEDED, "", result))

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        return None  # the check finishes inside start()

    def _act_as(self, pipeline: Pipeline, project: str, pipeline_account: str) -> tuple[list[str], list[str]]:
        """Accounts the caller (the functions' account) may not act as: the pipeline account
        (builds run as it) and the runtime accounts of the services the deploy stages update.
        IAM's testIamPermissions answers for the caller and counts every grant that applies."""
        from google.api_core import exceptions as gexc

        if self._iam is None:
            self._iam = gcp_clients.iam_admin(self._settings)
        if self._services is None:
            self._services = gcp_clients.run_services(self._settings)
        accounts, notes = [pipeline_account], []
        for service in deployed_services(pipeline):
            name = f"projects/{project}/locations/{self._settings.region}/services/{service}"
            try:
                found = self._services.get_service(name=name, retry=None, timeout=self._caller.timeout)
            except gexc.NotFound:
                notes.append(f"service {service} does not exist yet: its deploy creates it")
                continue
            runs_as = found.template.service_account
            if not runs_as:
                notes.append(f"service {service} runs as the project's default compute account; actAs on it "
                             "is not checked here")
            elif runs_as not in accounts:
                accounts.append(runs_as)
        missing = []
        for runs_as in accounts:
            answer = self._iam.test_iam_permissions(
                request={"resource": f"projects/-/serviceAccounts/{runs_as}", "permissions": [ACT_AS]},
                retry=None, timeout=self._caller.timeout)
            if ACT_AS not in answer.permissions:
                missing.append(runs_as)
        return missing, notes


def secret_manager_client() -> Any:
    """The real Secret Manager client, for per-secret accessor bindings on GCP."""
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()
