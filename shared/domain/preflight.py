"""The pre-release permission check (seed, step 3): does the pipeline service account hold
exactly the roles the seed names, no fewer?

The required set is data derived from the pipeline file, shared with the deploy plan
(``deploy/model.py``), so what is deployed and what is checked can never drift apart.

The check reads the ACTUAL bindings: the project's IAM policy through Resource Manager v3
and, because ``roles/secretmanager.secretAccessor`` is granted per secret (not project-wide),
the policies of the prod secrets through Secret Manager when a client for it is given.
A missing role fails; a role beyond the seed's set is only a warning, because an operator
may have a reason (e.g. ``roles/logging.logWriter`` for build logs) that the seed did not foresee.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from shared.domain.iam_roles import permissions_of
from shared.domain.pipeline import Pipeline

# Said in every report: a grant on a folder, the organisation or to a group looks missing here.
DIRECT_ONLY = ("the roles above are read from the project's direct bindings only (and the prod secrets' "
               "policies): roles granted on a folder, the organisation or to a group are not counted; actAs is "
               "tested with IAM's testIamPermissions, which counts every grant")

# The seed's "Workload Identity Federation" list. Vector schema migrations: the seed allows
# roles/cloudsql.editor "or a narrower DDL role". DDL rights are not IAM permissions at all
# (they are grants of the Postgres user the migration logs in as), so a custom IAM role could
# not narrow DDL; we keep the seed's predefined role so that the seed, the deploy plan and this
# check name the same thing. deploy/README.md explains the trade-off and how to swap it.
SCHEMA_MIGRATION_ROLE = "roles/cloudsql.editor"
SECRET_ACCESSOR_ROLE = "roles/secretmanager.secretAccessor"
BASE_ROLES: frozenset[str] = frozenset(
    {
        "roles/artifactregistry.writer",  # build & push
        "roles/run.admin",  # deployments
        "roles/run.developer",  # deployments
        "roles/cloudsql.client",  # migrate jobs (Cloud SQL Proxy connect)
        SCHEMA_MIGRATION_ROLE,  # vector schema migrations
        "roles/redis.admin",  # Memorystore connections
        "roles/compute.networkUser",  # Serverless VPC Access
    }
)
# Beyond the seed: builds run as the pipeline account with CLOUD_LOGGING_ONLY (a user-specified
# build account must keep its logs out of the default bucket), so it writes their logs.
BUILD_LOG_ROLE = "roles/logging.logWriter"
# Granted to the service account on other resources, never expected on the project:
# they are not "extra" when they show up in the project's policy for other reasons.
IGNORED_EXTRA_ROLES = frozenset({"roles/iam.workloadIdentityUser"})


def secret_id(reference: str) -> str:
    """``name``, ``name:latest`` or ``projects/p/secrets/name/versions/3`` -> ``name``."""
    text = str(reference).strip()
    if text.startswith("projects/"):
        parts = text.split("/")
        return parts[3] if len(parts) > 3 else text
    return text.split(":", 1)[0]


def prod_secret_names(pipeline: Pipeline) -> tuple[str, ...]:
    """Secret ids the prod stages read (``params.secrets``: env var -> secret), sorted, unique."""
    names: set[str] = set()
    for stage in pipeline.stages:
        if stage.environment != "prod":
            continue
        secrets = stage.params.get("secrets") or {}
        values: Iterable[Any] = secrets.values() if isinstance(secrets, Mapping) else secrets
        names.update(secret_id(v) for v in values if str(v).strip())
    return tuple(sorted(names))


def build_secret_names(pipeline: Pipeline) -> tuple[str, ...]:
    """Secret ids build stages fetch through ``params.available_secrets`` (as the build's account)."""
    names = {secret_id(v) for stage in pipeline.stages if stage.kind.value == "build"
             for v in (stage.params.get("available_secrets") or {}).values() if str(v).strip()}
    return tuple(sorted(names))


def required_roles(pipeline: Pipeline) -> frozenset[str]:
    """The seed's role set and the build log writer; the secret accessor only when some prod
    stage needs a secret."""
    if prod_secret_names(pipeline):
        return BASE_ROLES | {BUILD_LOG_ROLE, SECRET_ACCESSOR_ROLE}
    return BASE_ROLES | {BUILD_LOG_ROLE}


def deployed_services(pipeline: Pipeline) -> tuple[str, ...]:
    """Cloud Run services the deploy stages update (whose runtime accounts the caller must act as)."""
    names: list[str] = []
    for stage in pipeline.stages:
        if stage.kind.value == "deploy":
            for name in [*stage.params.get("services", ()), *stage.params.get("background_services", ())]:
                if str(name) not in names:
                    names.append(str(name))
    return tuple(names)


def member_of(service_account: str) -> str:
    return f"serviceAccount:{service_account}"


@dataclass(frozen=True)
class PreflightReport:
    service_account: str
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    checked_roles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. secrets lacking a per-secret binding

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def first_failure(self) -> str:
        return f"missing role {self.missing[0]} for {self.service_account}" if self.missing else ""


def roles_of_member(policy: Any, member: str) -> set[str]:
    """Roles the policy grants to ``member`` unconditionally.

    A conditional binding (IAM conditions) may not hold when a stage runs, so it does not
    count as granted; the report names it instead (see ``conditional_roles_of_member``)."""
    return {b.role for b in policy.bindings if member in b.members and not _has_condition(b)}


def conditional_roles_of_member(policy: Any, member: str) -> set[str]:
    return {b.role for b in policy.bindings if member in b.members and _has_condition(b)}


def _has_condition(binding: Any) -> bool:
    condition = getattr(binding, "condition", None)
    return bool(condition is not None and getattr(condition, "expression", ""))


def check_permissions(
    projects_client: Any,
    project: str,
    service_account: str,
    pipeline: Pipeline,
    secrets_client: Any = None,
    call_options: Mapping[str, Any] | None = None,
) -> PreflightReport:
    """Read the actual policies and compare the roles of ``service_account`` with ``required_roles``.

    ``projects_client`` is a ``resourcemanager_v3.ProjectsClient``. The secret accessor is
    satisfied by a project-wide grant, or, when ``secrets_client`` (a Secret Manager
    client) is given, by a grant on every secret the prod stages need. ``call_options``
    (e.g. ``retry=None, timeout=30``) go to every RPC. Client errors propagate (the caller
    decides between permanent and transient).
    """
    options = dict(call_options or {})
    member = member_of(service_account)
    project_policy = projects_client.get_iam_policy(
        request={"resource": f"projects/{project}", "options": {"requested_policy_version": 3}}, **options
    )
    secret_policies = None
    needs_secret_lookup = (
        secrets_client is not None
        and SECRET_ACCESSOR_ROLE in required_roles(pipeline)
        and SECRET_ACCESSOR_ROLE not in roles_of_member(project_policy, member)
    )
    if needs_secret_lookup:
        secret_policies = {
            name: secrets_client.get_iam_policy(request={"resource": f"projects/{project}/secrets/{name}"},
                                                **options)
            for name in prod_secret_names(pipeline)
        }
    return evaluate(project_policy, service_account, pipeline, secret_policies)


def evaluate(
    project_policy: Any,
    service_account: str,
    pipeline: Pipeline,
    secret_policies: Mapping[str, Any] | None = None,
) -> PreflightReport:
    """The pure comparison: policies in (``google.iam.v1.policy_pb2.Policy``), report out.

    ``secret_policies`` maps secret id -> that secret's policy; None means they were not
    read, so only a project-wide secret accessor grant counts."""
    member = member_of(service_account)
    granted = roles_of_member(project_policy, member)
    required = required_roles(pipeline)
    notes = [f"role {role} is granted only under an IAM condition; not counted"
             for role in sorted(conditional_roles_of_member(project_policy, member) & required)]
    missing = sorted(required - granted)
    if SECRET_ACCESSOR_ROLE in missing and secret_policies is not None:
        lacking = [name for name in prod_secret_names(pipeline)
                   if name not in secret_policies
                   or SECRET_ACCESSOR_ROLE not in roles_of_member(secret_policies[name], member)]
        if lacking:
            notes.append(f"{SECRET_ACCESSOR_ROLE} is missing on secret(s) {', '.join(lacking)}")
        else:
            missing.remove(SECRET_ACCESSOR_ROLE)
    elif SECRET_ACCESSOR_ROLE in granted and SECRET_ACCESSOR_ROLE in required:
        notes.append(f"{SECRET_ACCESSOR_ROLE} is granted project-wide; per-secret bindings are narrower")
    for role in missing:
        # The same table the local stand-in enforces: which permissions our calls need from the role,
        # and whether another granted role already carries them (run.developer inside run.admin).
        needed = permissions_of([role])
        if needed and needed <= permissions_of(granted):
            notes.append(f"{role} is missing, but the granted roles carry every permission our calls need from it")
    notes.append(DIRECT_ONLY)
    extra = sorted(granted - required - IGNORED_EXTRA_ROLES)
    return PreflightReport(
        service_account=service_account,
        missing=missing,
        extra=extra,
        checked_roles=sorted(required),
        notes=notes,
    )


def format_report(report: PreflightReport) -> str:
    """Human-readable lines for the CLI and the stage result: failures first, then warnings."""
    lines = [f"preflight for {report.service_account}: {'OK' if report.ok else 'FAILED'}"]
    lines += [f"  MISSING  {role}" for role in report.missing]
    lines += [f"  WARNING  extra role {role} (not in the seed's set)" for role in report.extra]
    lines += [f"  NOTE     {note}" for note in report.notes]
    lines.append(f"  checked  {len(report.checked_roles)} role(s): {', '.join(report.checked_roles)}")
    return "\n".join(lines)
