"""The IAM policies the deploy plan leaves behind, as data: what the local stand-in enforces.

``policies(plan)`` reads the plan's bindings (nothing is invented here): project-level
grants, grants on service accounts (who may act as them), and the custom role's
permissions. The local stack loads exactly these into the stand-in, so a release that
passes locally passes with deploy/'s bindings and no more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from deploy.model import CUSTOM_ROLES, Plan


@dataclass(frozen=True)
class Policies:
    project: dict[str, list[str]] = field(default_factory=dict)  # role -> members
    accounts: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # account -> role -> members
    custom_roles: dict[str, list[str]] = field(default_factory=dict)  # role name -> permissions
    queues: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # Cloud Tasks queue -> role -> members
    repositories: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # Artifact Registry repo -> role -> members
    # Cloud Build connection (projects/P/locations/L/connections/C) -> role -> members
    connections: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    run_services: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # Cloud Run service -> role -> members


def policies(plan: Plan) -> Policies:
    result = Policies(custom_roles={f"projects/{plan.project}/roles/{role_id}": list(permissions)
                                    for role_id, permissions in CUSTOM_ROLES.items()})
    for binding in plan.bindings:
        if binding.scope == "project":
            result.project.setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "service-account":
            result.accounts.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "tasks-queue":
            result.queues.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "artifact-repository":
            result.repositories.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "build-connection":
            result.connections.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "run-service":
            result.run_services.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
    return result
