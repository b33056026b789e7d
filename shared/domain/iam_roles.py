"""Which permissions the roles we grant carry, for the permissions our API calls need.

One table, read by the preflight (does an account hold a permission through its roles?)
and by the local stand-in (may this caller make this call?). Each row quotes Google's
predefined-roles reference (https://cloud.google.com/iam/docs/roles-permissions) and lists
the permissions of that role that some call of ours needs -- not the role's full list.
Roles of the seed that no API call of ours needs (the workloads use them) are in
``WORKLOAD_ROLES``, with the reason, and deploy/README.md lists them.
"""
from __future__ import annotations

from typing import Iterable, Mapping

ACT_AS = "iam.serviceAccounts.actAs"

_RUN_DEVELOPER = frozenset({
    "run.services.get", "run.services.list", "run.services.create", "run.services.update",
    "run.revisions.get", "run.revisions.list", "run.jobs.get", "run.jobs.list", "run.jobs.create",
    "run.jobs.update", "run.jobs.run", "run.jobs.runWithOverrides", "run.executions.get", "run.executions.list",
    "run.executions.cancel", "run.operations.get",
})

ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    # https://cloud.google.com/iam/docs/roles-permissions/cloudbuild#cloudbuild.builds.editor
    # "Cloud Build Editor (roles/cloudbuild.builds.editor): Provides full access to Cloud Build resources."
    # (cloudbuild.builds.create, cloudbuild.builds.get, cloudbuild.builds.list, cloudbuild.builds.update, ...)
    "roles/cloudbuild.builds.editor": frozenset({
        "cloudbuild.builds.create", "cloudbuild.builds.get", "cloudbuild.builds.list", "cloudbuild.builds.update"}),
    # https://cloud.google.com/iam/docs/roles-permissions/cloudbuild#cloudbuild.builds.viewer
    # "Cloud Build Viewer (roles/cloudbuild.builds.viewer): Provides access to view Cloud Build resources."
    "roles/cloudbuild.builds.viewer": frozenset({"cloudbuild.builds.get", "cloudbuild.builds.list"}),
    # https://cloud.google.com/iam/docs/roles-permissions/run#run.developer
    # "Cloud Run Developer (roles/run.developer): Read and write access to all Cloud Run resources."
    "roles/run.developer": _RUN_DEVELOPER,
    # https://cloud.google.com/iam/docs/roles-permissions/run#run.admin
    # "Cloud Run Admin (roles/run.admin): Full control over all Cloud Run resources." (a superset of
    # run.developer: it adds the setIamPolicy permissions)
    "roles/run.admin": _RUN_DEVELOPER | {"run.services.setIamPolicy", "run.jobs.setIamPolicy"},
    # https://cloud.google.com/iam/docs/roles-permissions/iam#iam.serviceAccountUser
    # "Service Account User (roles/iam.serviceAccountUser): Run operations as the service account."
    "roles/iam.serviceAccountUser": frozenset({ACT_AS, "iam.serviceAccounts.get", "iam.serviceAccounts.list"}),
    # https://cloud.google.com/iam/docs/roles-permissions/artifactregistry#artifactregistry.writer
    # "Artifact Registry Writer (roles/artifactregistry.writer): Access to read and write repository items."
    "roles/artifactregistry.writer": frozenset({
        "artifactregistry.repositories.uploadArtifacts", "artifactregistry.repositories.downloadArtifacts",
        "artifactregistry.dockerimages.get", "artifactregistry.dockerimages.list", "artifactregistry.tags.get",
        "artifactregistry.tags.list", "artifactregistry.tags.create", "artifactregistry.tags.update"}),
    # https://cloud.google.com/iam/docs/roles-permissions/artifactregistry#artifactregistry.reader
    # "Artifact Registry Reader (roles/artifactregistry.reader): Access to read repository items."
    "roles/artifactregistry.reader": frozenset({
        "artifactregistry.repositories.downloadArtifacts", "artifactregistry.dockerimages.get",
        "artifactregistry.dockerimages.list", "artifactregistry.tags.get", "artifactregistry.tags.list"}),
    # https://cloud.google.com/iam/docs/roles-permissions/logging#logging.logWriter
    # "Logs Writer (roles/logging.logWriter): Provides the permissions to write log entries."
    "roles/logging.logWriter": frozenset({"logging.logEntries.create"}),
    # The two viewer rows below are kept for the preflight's reading of a policy; deploy/ grants neither:
    # the runtime account gets the custom role releaseCanaryReader with exactly logging.logEntries.list
    # and monitoring.timeSeries.list (deploy/model.py CUSTOM_ROLES; custom roles are passed as ``custom``).
    # https://cloud.google.com/iam/docs/roles-permissions/logging#logging.viewer
    # "Logs Viewer (roles/logging.viewer): Provides access to view logs." (logging.logEntries.list, ...)
    "roles/logging.viewer": frozenset({"logging.logEntries.list"}),
    # https://cloud.google.com/iam/docs/roles-permissions/monitoring#monitoring.viewer
    # "Monitoring Viewer (roles/monitoring.viewer): Provides read-only access to get and list
    #  information about all monitoring data and configurations." (monitoring.timeSeries.list, ...)
    "roles/monitoring.viewer": frozenset({"monitoring.timeSeries.list"}),
    # https://cloud.google.com/iam/docs/roles-permissions/cloudtasks#cloudtasks.enqueuer
    # "Cloud Tasks Enqueuer (roles/cloudtasks.enqueuer): Can create tasks." (cloudtasks.tasks.create)
    "roles/cloudtasks.enqueuer": frozenset({"cloudtasks.tasks.create"}),
    # https://cloud.google.com/iam/docs/roles-permissions/cloudsql#cloudsql.client
    # "Cloud SQL Client (roles/cloudsql.client): Connectivity access to Cloud SQL instances."
    "roles/cloudsql.client": frozenset({"cloudsql.instances.connect", "cloudsql.instances.get"}),
    # https://cloud.google.com/iam/docs/roles-permissions/resourcemanager#resourcemanager.projectIamAdmin
    # "Project IAM Admin (roles/resourcemanager.projectIamAdmin): Provides permissions to administer IAM
    #  policies on projects."
    "roles/resourcemanager.projectIamAdmin": frozenset({
        "resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"}),
    # https://cloud.google.com/iam/docs/roles-permissions/iam#iam.securityReviewer
    # "Security Reviewer (roles/iam.securityReviewer): Provides permissions to list all resources and
    #  allow policies on them." (the preflight could use it; deploy/ grants a narrower custom role)
    "roles/iam.securityReviewer": frozenset({
        "resourcemanager.projects.getIamPolicy", "secretmanager.secrets.getIamPolicy"}),
    # https://cloud.google.com/iam/docs/roles-permissions/secretmanager#secretmanager.secretAccessor
    # "Secret Manager Secret Accessor (roles/secretmanager.secretAccessor): Allows accessing the payload
    #  of secrets." (secretmanager.versions.access)
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
    # https://cloud.google.com/iam/docs/roles-permissions/basic: "Owner (roles/owner)" holds every permission.
}
OWNER = "roles/owner"

# Seed roles no API call of ours needs; why each is granted anyway (deploy/README.md lists them).
WORKLOAD_ROLES: Mapping[str, str] = {
    "roles/cloudsql.editor": "the vector schema step's DDL runs as a Postgres user; IAM side of the seed's choice",
    "roles/redis.admin": "used by the app's workloads (Memorystore), not by an API call of the orchestrator",
    "roles/compute.networkUser": "used by the app's workloads (Serverless VPC Access), not by an API call of ours",
    "roles/run.developer": "covered by roles/run.admin, which the same account holds (seed lists both)",
    "roles/secretmanager.secretAccessor": "the prod jobs read their secrets at run time (Cloud Run, not us)",
    "roles/cloudsql.client": "the migrate jobs and the schema step connect through the Cloud SQL proxy",
}


def permissions_of(roles: Iterable[str], custom: Mapping[str, Iterable[str]] | None = None) -> frozenset[str]:
    """Every permission the roles carry that this table knows (custom roles by their listed permissions)."""
    custom = custom or {}
    found: set[str] = set()
    for role in roles:
        found |= ROLE_PERMISSIONS.get(role, frozenset())
        found |= set(custom.get(role, ()))
    return frozenset(found)


def grants(roles: Iterable[str], permission: str, custom: Mapping[str, Iterable[str]] | None = None) -> bool:
    roles = list(roles)
    return OWNER in roles or permission in permissions_of(roles, custom)
