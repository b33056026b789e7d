"""google.iam.admin.v1.IAM TestIamPermissions on service accounts: which of the asked
permissions the caller holds on an account (e.g. may it act as it?).

https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts/testIamPermissions:
"Tests whether the caller has the specified permissions on a ServiceAccount." It needs no
permission of its own, and answers with the subset the caller holds (project grants and
grants on the account both count).
"""
from __future__ import annotations

import re

import grpc
from google.iam.v1 import iam_policy_pb2

from local.standin.common import ApiError

SERVICE = "google.iam.admin.v1.IAM"
_ACCOUNT = re.compile(r"^projects/[^/]+/serviceAccounts/([^/]+)$")


class IamAdminService:
    def __init__(self, guard) -> None:
        self._guard = guard

    def register(self, registry) -> None:
        registry.add(SERVICE, "TestIamPermissions", self.test_iam_permissions,
                     iam_policy_pb2.TestIamPermissionsRequest, iam_policy_pb2.TestIamPermissionsResponse)

    def test_iam_permissions(self, request: iam_policy_pb2.TestIamPermissionsRequest):
        match = _ACCOUNT.match(request.resource)
        if not match:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid resource {request.resource!r}")
        caller = self._guard.current_caller()
        held = [p for p in request.permissions
                if not self._guard.enforcing or self._guard.holds(f"serviceAccount:{caller}", p, match[1])]
        return iam_policy_pb2.TestIamPermissionsResponse(permissions=held)
