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
from shared.domain.preflight import SECRET_ACCESSOR_ROLE, check_permissions, format_report, required_roles
from shared.domain.state import StageState


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
    ):
        self._settings = settings
        self._projects = projects_client
        self._secrets = secrets_client
        self._secrets_factory = secrets_client_factory
        self._caller = caller or ApiCaller()

    def _projects_client(self) -> Any:
        if self._projects is None:
            from shared.adapters import gcp_clients

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
        result = {
            "service_account": account,
            "warnings": list(report.extra),  # roles beyond the seed's set
            "missing_roles": list(report.missing),
            "checked_roles": list(report.checked_roles),
            "notes": list(report.notes),
            "report": format_report(report),
        }
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


def secret_manager_client() -> Any:
    """The real Secret Manager client, for per-secret accessor bindings on GCP."""
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()
