"""Executors: carry out ``StartStage`` through the real Google client libraries.

``build_executors(settings)`` returns one executor per stage kind (the keys are
``StageKind`` values, as ``StartStage.kind`` carries them). Clients are created on
first use, because importing a client library costs hundreds of milliseconds and a
function invocation usually needs one kind at most. Tests pass ``clients`` to share
them, or let the settings point the clients at the local stand-in.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from shared.app.config import Settings
from shared.adapters.executors.calls import ApiCaller, RetryPolicy
from shared.adapters.executors.cloud_build import CloudBuildExecutor
from shared.adapters.executors.http_check import HttpCheckExecutor, RequestsProber
from shared.adapters.executors.preflight import PreflightExecutor
from shared.adapters.executors.registry_rollback import rollback_from_registry, rollback_to_tag
from shared.adapters.executors.run_jobs import RunJobExecutor
from shared.adapters.executors.run_services import DeployExecutor, TrafficExecutor, rollback
from shared.domain.pipeline import StageKind
from shared.app.ports import StageExecutor

CLIENT_NAMES = ("cloud_build", "jobs", "executions", "services", "revisions")


def _factories() -> dict[str, Callable[[Settings], Any]]:
    from shared.adapters import gcp_clients

    return {
        "cloud_build": gcp_clients.cloud_build,
        "jobs": gcp_clients.run_jobs,
        "executions": gcp_clients.run_executions,
        "services": gcp_clients.run_services,
        "revisions": gcp_clients.run_revisions,
        # Only for rollbacks from the registry; not in CLIENT_NAMES, no stage needs it.
        "artifact_registry": gcp_clients.artifact_registry,
    }


class _LazyClient:
    """Stands in for a client until its first method call, then is that client."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._factory()
        return getattr(self._client, name)


def default_clients(settings: Settings, names: Iterable[str] = CLIENT_NAMES) -> dict[str, Any]:
    factories = _factories()
    return {name: _LazyClient(lambda f=factories[name]: f(settings)) for name in names}


def build_executors(
    settings: Settings,
    clients: Mapping[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> dict[str, StageExecutor]:
    """One executor per executable kind. ``approval`` is not here: the dispatcher sends
    approval requests itself. ``clients`` may hold cloud_build, jobs, executions, services,
    revisions (and projects for the preflight); missing ones are created from settings."""
    given = dict(clients or {})
    missing = [n for n in CLIENT_NAMES if n not in given]
    all_clients = {**default_clients(settings, missing), **given} if missing else given
    caller = ApiCaller(retry or RetryPolicy())
    return {
        StageKind.BUILD.value: CloudBuildExecutor(settings, all_clients["cloud_build"], caller),
        StageKind.JOB.value: RunJobExecutor(settings, all_clients["jobs"], all_clients["executions"], caller),
        StageKind.DEPLOY.value: DeployExecutor(settings, all_clients["services"], all_clients["revisions"], caller),
        StageKind.TRAFFIC.value: TrafficExecutor(settings, all_clients["services"], all_clients["revisions"], caller),
        StageKind.CHECK.value: HttpCheckExecutor(settings, all_clients["services"], caller),
        # Builds its IAM clients on first use; "projects" in ``clients`` replaces the default.
        StageKind.PREFLIGHT.value: PreflightExecutor(settings, projects_client=given.get("projects"), caller=caller),
    }


__all__ = [
    "ApiCaller", "CloudBuildExecutor", "DeployExecutor", "HttpCheckExecutor", "PreflightExecutor",
    "RequestsProber", "RetryPolicy", "RunJobExecutor", "TrafficExecutor", "build_executors", "default_clients", "rollback",
    "rollback_from_registry", "rollback_to_tag",
]
