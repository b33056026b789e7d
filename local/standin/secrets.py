"""google.cloud.secretmanager.v1.SecretManagerService: secrets, their versions and who may read them.

Enough for what a deployment does with secrets: the operator creates a secret and adds versions,
Cloud Run resolves a function's secret references when its revision deploys (the local applier
does the same when it starts a function, local/apply_plan.py), and the preflight reads a
secret's IAM policy. Rules enforced, each as the API documents it
(https://cloud.google.com/secret-manager/docs/reference/rpc/google.cloud.secretmanager.v1):
- A secret or version that does not exist is NOT_FOUND.
- ``versions/latest`` is an alias of "the most recently created SecretVersion"
  (SecretVersion.name, AccessSecretVersionRequest.name); a secret without versions is NOT_FOUND.
- Accessing a DISABLED or DESTROYED version is FAILED_PRECONDITION
  (https://cloud.google.com/secret-manager/docs/disable-secret-version: "a disabled secret version
  cannot be accessed"; destroying "irrevocably destroys the secret data").
- A secret id is letters, digits, '-' and '_', at most 255 characters (Secret.name): INVALID_ARGUMENT.
- Creating a secret that exists is ALREADY_EXISTS.
Who may call what is the IAM guard's job (local/standin/iam_guard.py): AccessSecretVersion needs
``secretmanager.versions.access`` on the project or on the secret (roles/secretmanager.secretAccessor
is granted per secret by deploy/).
"""
from __future__ import annotations

import re
import threading
import zlib
from datetime import datetime, timezone

import grpc
from google.cloud import secretmanager_v1 as sm
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2

from local.standin.common import ApiError, clone

SERVICE = "google.cloud.secretmanager.v1.SecretManagerService"
SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
State = sm.SecretVersion.State


class SecretManagerService:
    def __init__(self, project: str, project_number: str) -> None:
        self._project = project
        self._number = project_number
        self._secrets: dict[str, sm.Secret] = {}  # secret id -> secret
        self._versions: dict[str, list[tuple[sm.SecretVersion, bytes]]] = {}  # secret id -> versions, oldest first
        self._policies: dict[str, dict[str, list[str]]] = {}  # secret id -> role -> members
        self._lock = threading.Lock()

    def register(self, registry) -> None:
        for name, handler, request, response in (
            ("CreateSecret", self.create_secret, sm.CreateSecretRequest, sm.Secret),
            ("GetSecret", self.get_secret, sm.GetSecretRequest, sm.Secret),
            ("AddSecretVersion", self.add_secret_version, sm.AddSecretVersionRequest, sm.SecretVersion),
            ("GetSecretVersion", self.get_secret_version, sm.GetSecretVersionRequest, sm.SecretVersion),
            ("ListSecretVersions", self.list_secret_versions, sm.ListSecretVersionsRequest,
             sm.ListSecretVersionsResponse),
            ("AccessSecretVersion", self.access_secret_version, sm.AccessSecretVersionRequest,
             sm.AccessSecretVersionResponse),
            ("DisableSecretVersion", self.disable, sm.DisableSecretVersionRequest, sm.SecretVersion),
            ("EnableSecretVersion", self.enable, sm.EnableSecretVersionRequest, sm.SecretVersion),
            ("DestroySecretVersion", self.destroy, sm.DestroySecretVersionRequest, sm.SecretVersion),
        ):
            registry.add(SERVICE, name, handler, request, response)
        registry.add(SERVICE, "GetIamPolicy", self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest,
                     policy_pb2.Policy)
        registry.add(SERVICE, "DeleteSecret", self.delete_secret, sm.DeleteSecretRequest, empty_pb2.Empty)

    # -- steering (the local applier: the plan's bindings on each secret) ------------------
    def set_bindings(self, secret_id: str, bindings: dict[str, list[str]]) -> None:
        with self._lock:
            self._policies[secret_id] = {role: list(members) for role, members in bindings.items()}

    def roles_on(self, secret_id: str, member: str) -> list[str]:
        with self._lock:
            return [role for role, members in self._policies.get(secret_id, {}).items() if member in members]

    # -- secrets ------------------------------------------------------------------------
    def create_secret(self, request: sm.CreateSecretRequest) -> sm.Secret:
        if not SECRET_ID.match(request.secret_id):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid secret id {request.secret_id!r}")
        self._check_parent(request.parent)
        secret = clone(request.secret)
        secret.name = f"projects/{self._number}/secrets/{request.secret_id}"
        secret.create_time = datetime.now(timezone.utc)
        with self._lock:
            if request.secret_id in self._secrets:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Secret [{secret.name}] already exists.")
            self._secrets[request.secret_id] = secret
            self._versions[request.secret_id] = []
            return clone(secret)

    def get_secret(self, request: sm.GetSecretRequest) -> sm.Secret:
        with self._lock:
            return clone(self._secret(self._secret_id(request.name)))

    def delete_secret(self, request: sm.DeleteSecretRequest) -> empty_pb2.Empty:
        secret_id = self._secret_id(request.name)
        with self._lock:
            self._secret(secret_id)
            del self._secrets[secret_id], self._versions[secret_id]
            self._policies.pop(secret_id, None)
        return empty_pb2.Empty()

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        secret_id = self._secret_id(request.resource)
        with self._lock:
            self._secret(secret_id)
            bindings = self._policies.get(secret_id, {})
            return policy_pb2.Policy(version=1, bindings=[policy_pb2.Binding(role=r, members=sorted(m))
                                                          for r, m in sorted(bindings.items()) if m])

    # -- versions -------------------------------------------------------------------------
    def add_secret_version(self, request: sm.AddSecretVersionRequest) -> sm.SecretVersion:
        secret_id = self._secret_id(request.parent)
        data = request.payload.data
        if request.payload.data_crc32c and request.payload.data_crc32c != zlib.crc32(data):
            # AddSecretVersionRequest: "... the request fails with INVALID_ARGUMENT" on a checksum mismatch.
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "Checksum mismatch: the payload's data_crc32c is wrong")
        with self._lock:
            secret = self._secret(secret_id)
            versions = self._versions[secret_id]
            version = sm.SecretVersion(name=f"{secret.name}/versions/{len(versions) + 1}", state=State.ENABLED,
                                       create_time=datetime.now(timezone.utc))
            versions.append((version, bytes(data)))
            return clone(version)

    def get_secret_version(self, request: sm.GetSecretVersionRequest) -> sm.SecretVersion:
        with self._lock:
            return clone(self._version(request.name)[0])

    def list_secret_versions(self, request: sm.ListSecretVersionsRequest) -> sm.ListSecretVersionsResponse:
        secret_id = self._secret_id(request.parent)
        with self._lock:
            self._secret(secret_id)
            newest_first = [clone(v) for v, _ in reversed(self._versions[secret_id])]
        return sm.ListSecretVersionsResponse(versions=newest_first, total_size=len(newest_first))

    def access_secret_version(self, request: sm.AccessSecretVersionRequest) -> sm.AccessSecretVersionResponse:
        with self._lock:
            version, data = self._version(request.name)
        if version.state != State.ENABLED:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"Secret Version [{version.name}] is in {version.state.name} state.")
        return sm.AccessSecretVersionResponse(name=version.name, payload=sm.SecretPayload(
            data=data, data_crc32c=zlib.crc32(data)))

    def disable(self, request: sm.DisableSecretVersionRequest) -> sm.SecretVersion:
        return self._set_state(request.name, State.DISABLED)

    def enable(self, request: sm.EnableSecretVersionRequest) -> sm.SecretVersion:
        return self._set_state(request.name, State.ENABLED)

    def destroy(self, request: sm.DestroySecretVersionRequest) -> sm.SecretVersion:
        return self._set_state(request.name, State.DESTROYED)

    def _set_state(self, name: str, state: State) -> sm.SecretVersion:
        with self._lock:
            version, data = self._version(name)
            if version.state == State.DESTROYED:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Secret Version [{version.name}] is in DESTROYED state.")
            version.state = state
            if state == State.DESTROYED:  # the data is gone for good
                versions = self._versions[self._secret_id(version.name)]
                versions[[v.name for v, _ in versions].index(version.name)] = (version, b"")
            return clone(version)

    # -- names ----------------------------------------------------------------------------
    def _check_parent(self, parent: str) -> None:
        if parent not in (f"projects/{self._project}", f"projects/{self._number}"):
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"Project [{parent}] not found.")

    def _secret_id(self, name: str) -> str:
        """The secret id of projects/P/secrets/S[/versions/V], P the project's id or number."""
        parts = name.split("/")
        if len(parts) < 4 or parts[0] != "projects" or parts[2] != "secrets":
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid resource name {name!r}")
        self._check_parent("/".join(parts[:2]))
        return parts[3]

    def _secret(self, secret_id: str) -> sm.Secret:
        secret = self._secrets.get(secret_id)
        if secret is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND,
                           f"Secret [projects/{self._number}/secrets/{secret_id}] not found or has no versions.")
        return secret

    def _version(self, name: str) -> tuple[sm.SecretVersion, bytes]:
        """The version ``name`` names (``latest``: the most recently created); call with the lock held."""
        secret_id = self._secret_id(name)
        secret = self._secret(secret_id)
        wanted = name.rsplit("/versions/", 1)[-1] if "/versions/" in name else ""
        versions = self._versions[secret_id]
        if wanted == "latest" and versions:
            return versions[-1]
        if wanted.isdigit() and 0 < int(wanted) <= len(versions):
            return versions[int(wanted) - 1]
        if wanted == "latest":
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"Secret [{secret.name}] not found or has no versions.")
        raise ApiError(grpc.StatusCode.NOT_FOUND, f"Secret Version [{secret.name}/versions/{wanted}] not found.")
