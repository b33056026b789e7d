"""Executors: carry out ``StartStage`` through the real Google client libraries.

``build_executors(settings)`` returns one executor per stage kind (the keys are
``StageKind`` values, as ``StartStage.kind`` carries them). Executors and their clients
are created on first use (``Lazy``, shared/adapters/lazy.py), because importing a client
library costs hundreds of milliseconds and a function invocation usually needs one kind at
most: a kind's module is imported only when its executor is first used. The rollbacks live
in their modules (``run_services.rollback``, ``registry_rollback.rollback_from_registry``). Tests pass ``clients``
to share them, or let the settings point the clients at the local stand-in.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping

from shared.app.config import Settings
from shared.adapters.executors.calls import ApiCaller, RetryPolicy
from shared.domain.pipeline import StageKind
from shared.adapters import gcp_clients
from shared.adapters.lazy import Lazy

# Which module holds each executor: imported when the first of its kind is used.
_MODULES = {
    "CloudBuildExecutor": "cloud_build", "HttpCheckExecutor": "http_check", "PreflightExecutor": "preflight",
    "RunJobExecutor": "run_jobs", "DeployExecutor": "run_services", "TrafficExecutor": "run_services",
}
CLIENT_NAMES = ("cloud_build", "jobs", "executions", "services", "revisions")


def _factories() -> dict[str, Callable[[Settings], Any]]:
    return {
        "cloud_build": gcp_clients.cloud_build,
        "jobs": gcp_clients.run_jobs,
        "executions": gcp_clients.run_executions,
        "services": gcp_clients.run_services,
        "revisions": gcp_clients.run_revisions,
        # Only for rollbacks from the registry; not in CLIENT_NAMES, no stage needs it.
        "artifact_registry": gcp_clients.artifact_registry,
    }


def default_clients(settings: Settings, names: Iterable[str] = CLIENT_NAMES) -> dict[str, Any]:
    """Each client made on its first method call (shared/adapters/lazy.py)."""
    factories = _factories()
    return {name: Lazy(lambda f=factories[name]: f(settings)) for name in names}


def build_executors(
    settings: Settings,
    clients: Mapping[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
    histories: Any = None,
) -> dict[str, Any]:
    """One executor per executable kind (``StageExecutor``s), each built (and its module imported)
    when first used. ``approval`` is not here: the dispatcher sends approval requests itself.
    ``clients`` may hold cloud_build, jobs, executions, services, revisions (and projects for the
    preflight); missing ones are created from settings. ``histories`` (RevisionHistories) tells
    the deploy which revision last completed a release."""
    given = dict(clients or {})
    missing = [n for n in CLIENT_NAMES if n not in given]
    c = {**default_clients(settings, missing), **given} if missing else given
    caller = ApiCaller(retry or RetryPolicy())

    def make(name: str, *args: Any, **kwargs: Any) -> Lazy:
        module = f"{__name__}.{_MODULES[name]}"
        return Lazy(lambda: getattr(importlib.import_module(module), name)(settings, *args, **kwargs))

    return {
        StageKind.BUILD.value: make("CloudBuildExecutor", c["cloud_build"], caller),
        StageKind.JOB.value: make("RunJobExecutor", c["jobs"], c["executions"], caller),
        # The deploy starts from the template of the service's last revision that completed a release.
        StageKind.DEPLOY.value: make("DeployExecutor", c["services"], c["revisions"], caller, histories),
        StageKind.TRAFFIC.value: make("TrafficExecutor", c["services"], c["revisions"], caller),
        StageKind.CHECK.value: make("HttpCheckExecutor", c["services"], caller),
        # Builds its IAM clients on first use; "projects" in ``clients`` replaces the default.
        StageKind.PREFLIGHT.value: make("PreflightExecutor", projects_client=given.get("projects"), caller=caller),
    }


__all__ = ["ApiCaller", "RetryPolicy", "build_executors", "default_clients"]
