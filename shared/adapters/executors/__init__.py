"""Executors: carry out ``StartStage`` through the real Google client libraries.

``build_executors(settings)`` returns one executor per stage kind (the keys are
``StageKind`` values, as ``StartStage.kind`` carries them). Executors and their clients
are created on first use, because importing a client library costs hundreds of
milliseconds and a function invocation usually needs one kind at most: the mapping
imports a kind's module only when that kind is first looked up. Tests pass ``clients``
to share them, or let the settings point the clients at the local stand-in.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Iterator, Mapping

from shared.app.config import Settings
from shared.adapters.executors.calls import ApiCaller, RetryPolicy
from shared.domain.pipeline import StageKind
from shared.adapters import gcp_clients

# What this package exports, and from which module: imported when first named.
_EXPORTS = {
    "CloudBuildExecutor": "cloud_build", "HttpCheckExecutor": "http_check", "PreflightExecutor": "preflight",
    "RunJobExecutor": "run_jobs", "DeployExecutor": "run_services", "TrafficExecutor": "run_services",
    "rollback": "run_services", "rollback_from_registry": "registry_rollback", "rollback_to_tag": "registry_rollback",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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


class _ByKind(Mapping):
    """kind -> executor, each built (and its module imported) when first looked up."""

    def __init__(self, factories: Mapping[str, Callable[[], Any]]):
        self._factories = dict(factories)
        self._built: dict[str, Any] = {}

    def __getitem__(self, kind: str) -> Any:
        if kind not in self._built:
            self._built[kind] = self._factories[kind]()
        return self._built[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


def build_executors(
    settings: Settings,
    clients: Mapping[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
    histories: Any = None,
) -> Mapping[str, Any]:
    """One executor per executable kind (``StageExecutor``s). ``approval`` is not here: the
    dispatcher sends approval requests itself. ``clients`` may hold cloud_build, jobs,
    executions, services, revisions (and projects for the preflight); missing ones are
    created from settings. ``histories`` (RevisionHistories) tells the deploy which revision
    last completed a release."""
    given = dict(clients or {})
    missing = [n for n in CLIENT_NAMES if n not in given]
    c = {**default_clients(settings, missing), **given} if missing else given
    caller = ApiCaller(retry or RetryPolicy())

    def make(name: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        return lambda: __getattr__(name)(settings, *args, **kwargs)

    return _ByKind({
        StageKind.BUILD.value: make("CloudBuildExecutor", c["cloud_build"], caller),
        StageKind.JOB.value: make("RunJobExecutor", c["jobs"], c["executions"], caller),
        # The deploy starts from the template of the service's last revision that completed a release.
        StageKind.DEPLOY.value: make("DeployExecutor", c["services"], c["revisions"], caller, histories),
        StageKind.TRAFFIC.value: make("TrafficExecutor", c["services"], c["revisions"], caller),
        StageKind.CHECK.value: make("HttpCheckExecutor", c["services"], caller),
        # Builds its IAM clients on first use; "projects" in ``clients`` replaces the default.
        StageKind.PREFLIGHT.value: make("PreflightExecutor", projects_client=given.get("projects"), caller=caller),
    })


__all__ = [
    "ApiCaller", "CloudBuildExecutor", "DeployExecutor", "HttpCheckExecutor", "PreflightExecutor",
    "RetryPolicy", "RunJobExecutor", "TrafficExecutor", "build_executors", "default_clients", "rollback",
    "rollback_from_registry", "rollback_to_tag",
]
