"""IAM enforced on every call: who calls (their token), which permission the call needs, and
whether the policies grant it, with Google's answer when they do not.

The permission of each method is the one the API reference names for it (e.g.
https://cloud.google.com/build/docs/iam-roles-permissions, "cloudbuild.builds.create: create
builds"; https://cloud.google.com/run/docs/reference/iam/permissions). Deploying a service,
creating a job or starting a build that runs as a service account also needs
``iam.serviceAccounts.actAs`` on that account
(https://cloud.google.com/run/docs/securing/service-identity: "the deployer ... must have the
iam.serviceAccounts.actAs permission on the service identity";
https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts:
"the user who runs the build needs ... iam.serviceAccounts.actAs on the service account").
A call lacking a permission is PERMISSION_DENIED naming it. Operations (polling a long-running
call) need only a valid caller here.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

import grpc

from local.standin.common import ApiError
from local.standin.identity import KeyRing, default_compute_account
from shared.domain.iam_roles import ACT_AS, grants

PERMISSIONS: Mapping[str, Callable[[Any], str] | str] = {
    "CreateBuild": "cloudbuild.builds.create", "GetBuild": "cloudbuild.builds.get",
    "ListBuilds": "cloudbuild.builds.list", "CancelBuild": "cloudbuild.builds.update",
    "CreateJob": "run.jobs.create", "GetJob": "run.jobs.get", "UpdateJob": "run.jobs.update",
    "ListJobs": "run.jobs.list",
    "RunJob": lambda r: "run.jobs.runWithOverrides" if r.overrides.container_overrides or r.overrides.task_count
    else "run.jobs.run",
    "GetExecution": "run.executions.get", "ListExecutions": "run.executions.list",
    "CancelExecution": "run.executions.cancel",
    "CreateService": "run.services.create", "GetService": "run.services.get", "UpdateService": "run.services.update",
    "ListServices": "run.services.list", "GetRevision": "run.revisions.get", "ListRevisions": "run.revisions.list",
    # A secret's policy (Secret Manager) or the project's (Resource Manager): the same method name.
    "GetIamPolicy": lambda r: "secretmanager.secrets.getIamPolicy" if "/secrets/" in r.resource
    else "resourcemanager.projects.getIamPolicy",
    "SetIamPolicy": "resourcemanager.projects.setIamPolicy",
    # https://cloud.google.com/secret-manager/docs/access-control: one permission per call.
    "CreateSecret": "secretmanager.secrets.create", "GetSecret": "secretmanager.secrets.get",
    "DeleteSecret": "secretmanager.secrets.delete", "AddSecretVersion": "secretmanager.versions.add",
    "GetSecretVersion": "secretmanager.versions.get", "ListSecretVersions": "secretmanager.versions.list",
    "AccessSecretVersion": "secretmanager.versions.access", "DisableSecretVersion": "secretmanager.versions.disable",
    "EnableSecretVersion": "secretmanager.versions.enable", "DestroySecretVersion": "secretmanager.versions.destroy",
    "ListDockerImages": "artifactregistry.dockerimages.list", "GetDockerImage": "artifactregistry.dockerimages.get",
    "ListTags": "artifactregistry.tags.list", "GetTag": "artifactregistry.tags.get",
    # https://cloud.google.com/tasks/docs/reference-access-control: "cloudtasks.tasks.create: Create tasks";
    # a task with an OIDC token also needs actAs on that token's account ("... must have the
    # iam.serviceAccounts.actAs permission on the service account", Cloud Tasks: create HTTP target tasks).
    "CreateTask": "cloudtasks.tasks.create", "GetTask": "cloudtasks.tasks.get", "DeleteTask": "cloudtasks.tasks.delete",
    "CreateQueue": "cloudtasks.queues.create", "GetQueue": "cloudtasks.queues.get",
    # https://cloud.google.com/logging/docs/access-control ("logging.logEntries.list") and
    # https://cloud.google.com/monitoring/access-control ("monitoring.timeSeries.list").
    "ListLogEntries": "logging.logEntries.list", "ListTimeSeries": "monitoring.timeSeries.list",
}
# Need only a valid caller: polling operations; testing one's own permissions on an account.
OPERATIONS = {"GetOperation", "ListOperations", "DeleteOperation", "TestIamPermissions"}


class IamGuard:
    def __init__(self, keys: KeyRing, project: str, project_number: str,
                 project_roles: Callable[[str], set[str]]) -> None:
        self._keys = keys
        self._project = project
        self._project_number = project_number
        self._project_roles = project_roles  # member -> roles it holds on the project
        self._account_bindings: dict[str, dict[str, list[str]]] = {}  # account -> role -> members
        self._custom: dict[str, list[str]] = {}
        self._queue_bindings: dict[str, dict[str, list[str]]] = {}  # queue id -> role -> members
        self._repository_bindings: dict[str, dict[str, list[str]]] = {}  # repository id -> role -> members
        # (secret id, member) -> roles granted on that secret (the Secret Manager stand-in's policies)
        self.secret_roles: Callable[[str, str], list[str]] = lambda secret, member: []
        self._enforcing = False
        self._lock = threading.Lock()
        self._local = threading.local()  # the caller of the call this server thread serves

    def enforce(self, account_bindings: Mapping[str, Mapping[str, list[str]]] | None = None,
                custom_roles: Mapping[str, list[str]] | None = None,
                queue_bindings: Mapping[str, Mapping[str, list[str]]] | None = None,
                repository_bindings: Mapping[str, Mapping[str, list[str]]] | None = None) -> None:
        with self._lock:
            self._repository_bindings = {r: {role: list(m) for role, m in b.items()}
                                         for r, b in (repository_bindings or {}).items()}
            self._queue_bindings = {q: {r: list(m) for r, m in b.items()} for q, b in (queue_bindings or {}).items()}
            self._account_bindings = {a: {r: list(m) for r, m in b.items()} for a, b in (account_bindings or {}).items()}
            self._custom = {r: list(p) for r, p in (custom_roles or {}).items()}
            self._enforcing = True

    def revoke(self, member: str, role: str, account: str = "", repository: str = "") -> None:
        """Remove a grant (tests: "without this grant, the stage that needs it fails")."""
        with self._lock:
            on = self._account_bindings.get(account, {}) if account else (
                self._repository_bindings.get(repository, {}) if repository else {})
            members = on.get(role, [])
            if member in members:
                members.remove(member)

    def current_caller(self) -> str:
        return getattr(self._local, "caller", "")

    @property
    def enforcing(self) -> bool:
        return self._enforcing

    def check(self, method: str, request: Any, metadata: Mapping[str, str]) -> None:
        if not self._enforcing:
            return
        caller = self._keys.caller(dict(metadata))
        self._local.caller = caller
        if method in OPERATIONS:
            return
        rule = PERMISSIONS.get(method)
        if rule is None:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, f"stand-in: no permission known for {method}")
        permission = rule(request) if callable(rule) else rule
        member = f"serviceAccount:{caller}"
        queue = _queue_of(method, request)
        secret = _secret_of(request) if permission.startswith("secretmanager.") else ""
        repository = _repository_of(request) if permission.startswith("artifactregistry.") else ""
        if not (self.holds(member, permission) or (queue and self.holds_on_queue(member, permission, queue))
                or (secret and grants(self.secret_roles(secret, member), permission, self._custom))
                or (repository and self.holds_on_repository(member, permission, repository))):
            raise denied(permission, f"projects/{self._project}" + (f"/locations/-/queues/{queue}" if queue else "")
                         + (f"/secrets/{secret}" if secret else "")
                         + (f"/locations/-/repositories/{repository}" if repository else ""))
        account = self.runs_as(method, request)
        if account and not self.holds(member, ACT_AS, account):
            raise denied(ACT_AS, f"projects/-/serviceAccounts/{account}")

    def holds(self, member: str, permission: str, account: str = "") -> bool:
        """``member`` holds ``permission`` on the project, or (for an account) on that account."""
        with self._lock:
            custom = dict(self._custom)
            on_account = [r for r, ms in self._account_bindings.get(account, {}).items() if member in ms]
        return grants(self._project_roles(member), permission, custom) or (
            bool(account) and grants(on_account, permission, custom))

    def holds_on_queue(self, member: str, permission: str, queue: str) -> bool:
        """A grant on the Cloud Tasks queue itself (deploy/ binds the enqueuer role there only)."""
        with self._lock:
            roles = [r for r, ms in self._queue_bindings.get(queue, {}).items() if member in ms]
            custom = dict(self._custom)
        return grants(roles, permission, custom)

    def holds_on_repository(self, member: str, permission: str, repository: str) -> bool:
        """A grant on the Artifact Registry repository itself (deploy/ binds its repository roles there)."""
        with self._lock:
            roles = [r for r, ms in self._repository_bindings.get(repository, {}).items() if member in ms]
            custom = dict(self._custom)
        return grants(roles, permission, custom)

    def runs_as(self, method: str, request: Any) -> str:
        """The account the created resource will run as, when the call starts one."""
        if method == "CreateTask":  # the task's OIDC token is minted as this account
            return request.task.http_request.oidc_token.service_account_email
        if method == "CreateBuild":
            named = request.build.service_account
            return named.rsplit("/", 1)[-1] if named else default_compute_account(self._project_number)
        if method in ("CreateService", "UpdateService"):
            return request.service.template.service_account or default_compute_account(self._project_number)
        if method in ("CreateJob", "UpdateJob"):
            return request.job.template.template.service_account or default_compute_account(self._project_number)
        return ""


def _queue_of(method: str, request: Any) -> str:
    """The queue id a Cloud Tasks call is about ('' for other calls)."""
    if method in ("CreateTask",):
        return request.parent.rsplit("/queues/", 1)[-1] if "/queues/" in request.parent else ""
    if method in ("GetTask", "DeleteTask"):
        return request.name.split("/queues/", 1)[-1].split("/", 1)[0] if "/queues/" in request.name else ""
    return ""


def _repository_of(request: Any) -> str:
    """The repository id an Artifact Registry call is about (.../repositories/R/...)."""
    for attribute in ("name", "parent"):
        value = getattr(request, attribute, "")
        if isinstance(value, str) and "/repositories/" in value:
            return value.split("/repositories/", 1)[1].split("/", 1)[0]
    return ""


def _secret_of(request: Any) -> str:
    """The secret id a Secret Manager call is about (its name, parent or resource)."""
    for attribute in ("name", "parent", "resource"):
        value = getattr(request, attribute, "")
        if isinstance(value, str) and "/secrets/" in value:
            return value.split("/secrets/", 1)[1].split("/", 1)[0]
    return ""


def denied(permission: str, resource: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED,
                    f"Permission '{permission}' denied on resource '{resource}' (or it may not exist).")
