"""The IAM policies the deploy plan leaves behind, as data: what the local stand-in enforces.

``policies(plan)`` reads the plan's bindings (nothing is invented here): project-level
grants, grants on service accounts (who may act as them), and the custom role's
permissions. The local stack loads exactly these into the stand-in, so a release that
passes locally passes with deploy/'s bindings and no more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from deploy.model import PREFLIGHT_READER_PERMISSIONS, PREFLIGHT_READER_ROLE_ID, Plan


@dataclass(frozen=True)
class Policies:
    project: dict[str, list[str]] = field(default_factory=dict)  # role -> members
    # account (or "queue:<name>" for a grant on one Cloud Tasks queue) -> role -> members
    accounts: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    custom_roles: dict[str, list[str]] = field(default_factory=dict)  # role name -> permissions


def policies(plan: Plan) -> Policies:
    result = Policies(custom_roles={f"projects/{plan.project}/roles/{PREFLIGHT_READER_ROLE_ID}":
                                    list(PREFLIGHT_READER_PERMISSIONS)})
    for binding in plan.bindings:
        if binding.scope == "project":
            result.project.setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "service-account":
            result.accounts.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
        elif binding.scope == "tasks-queue":  # a grant on one Cloud Tasks queue (the probe queue)
            result.accounts.setdefault(f"queue:{binding.target}", {}).setdefault(binding.role, []).append(
                binding.member)
    return result
