"""google.cloud.resourcemanager.v3.Projects Get/SetIamPolicy: the policy the IAM check reads."""
from __future__ import annotations

import hashlib
import threading

from google.iam.v1 import iam_policy_pb2, policy_pb2

SERVICE = "google.cloud.resourcemanager.v3.Projects"


class ProjectsIamService:
    def __init__(self) -> None:
        self._policy = policy_pb2.Policy(version=1)
        self._lock = threading.Lock()
        self.set_bindings({})

    def register(self, registry) -> None:
        registry.add(SERVICE, "GetIamPolicy", self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest,
                     policy_pb2.Policy)
        registry.add(SERVICE, "SetIamPolicy", self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest,
                     policy_pb2.Policy)

    def set_bindings(self, bindings: dict[str, list[str]]) -> None:
        policy = policy_pb2.Policy(version=1, bindings=[
            policy_pb2.Binding(role=role, members=list(members)) for role, members in sorted(bindings.items())
        ])
        self._store(policy)

    def roles_of(self, member: str) -> set[str]:
        """Roles the project policy grants ``member`` unconditionally."""
        with self._lock:
            return {b.role for b in self._policy.bindings if member in b.members and not b.condition.expression}

    def revoke(self, member: str, role: str) -> None:
        with self._lock:
            policy = policy_pb2.Policy()
            policy.CopyFrom(self._policy)
        for binding in policy.bindings:
            if binding.role == role and member in binding.members:
                binding.members.remove(member)
        self._store(policy)

    def _store(self, policy: policy_pb2.Policy) -> None:
        policy.etag = hashlib.sha256(policy.SerializeToString(deterministic=True)).digest()[:8]
        with self._lock:
            self._policy = policy

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        with self._lock:
            return policy_pb2.Policy.FromString(self._policy.SerializeToString())

    def set_iam_policy(self, request: iam_policy_pb2.SetIamPolicyRequest) -> policy_pb2.Policy:
        policy = policy_pb2.Policy()
        policy.CopyFrom(request.policy)
        self._store(policy)
        return self.get_iam_policy(iam_policy_pb2.GetIamPolicyRequest(resource=request.resource))
