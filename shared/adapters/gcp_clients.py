"""The one place that builds the real Google API clients from Settings.

Every client carries the default Google credentials (google-auth's Application Default
Credentials: the function's service account on GCP, the key named by
GOOGLE_APPLICATION_CREDENTIALS elsewhere). When an endpoint setting is set (the local
stand-in on loopback) the channel is a local one and the same credentials ride on every
call, so the stand-in knows who calls and enforces IAM; otherwise the public endpoints are
used. Nothing else differs, so production code and tests run the same client code.

The client libraries are imported inside each function: importing them costs
hundreds of milliseconds, and most function invocations need one client at most.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from shared.app.config import Settings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from google.cloud import artifactregistry_v1, monitoring_v3, resourcemanager_v3, run_v2, tasks_v2
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
    from google.cloud.devtools import cloudbuild_v1


def _build(client_cls: type, transport_cls: type, endpoint: str) -> Any:
    if not endpoint:
        return client_cls()
    import grpc

    credentials = _default_credentials()
    if credentials is None:  # no credentials anywhere: the call goes unauthenticated
        return client_cls(transport=transport_cls(channel=grpc.insecure_channel(endpoint)))
    from google.auth.transport.grpc import AuthMetadataPlugin
    from google.auth.transport.requests import Request

    # A self-signed JWT for the API's host (https://google.aip.dev/auth/4111), as the client
    # libraries send one to Google; over a channel that only reaches local addresses.
    plugin = AuthMetadataPlugin(credentials, Request(), default_host=transport_cls.DEFAULT_HOST)
    channel_credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), grpc.metadata_call_credentials(plugin))
    return client_cls(transport=transport_cls(channel=grpc.secure_channel(endpoint, channel_credentials)))


def _default_credentials() -> Any:
    """Application Default Credentials (None when there are none), looked up once per key file."""
    where = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if where not in _CREDENTIALS:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            _CREDENTIALS[where] = google.auth.default()[0]
        except DefaultCredentialsError:
            _CREDENTIALS[where] = None
    return _CREDENTIALS[where]


_CREDENTIALS: dict[str, Any] = {}


def _run_client(settings: Settings, name: str) -> Any:
    from google.cloud import run_v2

    transports: dict[str, Callable[[], type]] = {
        "JobsClient": lambda: run_v2.services.jobs.transports.JobsGrpcTransport,
        "ExecutionsClient": lambda: run_v2.services.executions.transports.ExecutionsGrpcTransport,
        "ServicesClient": lambda: run_v2.services.services.transports.ServicesGrpcTransport,
        "RevisionsClient": lambda: run_v2.services.revisions.transports.RevisionsGrpcTransport,
    }
    return _build(getattr(run_v2, name), transports[name](), settings.cloud_run_endpoint)


def cloud_build(settings: Settings) -> "cloudbuild_v1.CloudBuildClient":
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport

    return _build(cloudbuild_v1.CloudBuildClient, CloudBuildGrpcTransport, settings.cloud_build_endpoint)


def run_jobs(settings: Settings) -> "run_v2.JobsClient":
    return _run_client(settings, "JobsClient")


def run_executions(settings: Settings) -> "run_v2.ExecutionsClient":
    return _run_client(settings, "ExecutionsClient")


def run_services(settings: Settings) -> "run_v2.ServicesClient":
    return _run_client(settings, "ServicesClient")


def run_revisions(settings: Settings) -> "run_v2.RevisionsClient":
    return _run_client(settings, "RevisionsClient")


def projects(settings: Settings) -> "resourcemanager_v3.ProjectsClient":
    from google.cloud import resourcemanager_v3
    from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport

    return _build(resourcemanager_v3.ProjectsClient, ProjectsGrpcTransport, settings.iam_endpoint)


def iam_admin(settings: Settings) -> Any:
    """IAM (service accounts): testIamPermissions, e.g. may the caller act as an account."""
    from google.cloud import iam_admin_v1
    from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

    return _build(iam_admin_v1.IAMClient, IAMGrpcTransport, settings.iam_endpoint)


def artifact_registry(settings: Settings) -> "artifactregistry_v1.ArtifactRegistryClient":
    from google.cloud import artifactregistry_v1
    from google.cloud.artifactregistry_v1.services.artifact_registry.transports import ArtifactRegistryGrpcTransport

    return _build(artifactregistry_v1.ArtifactRegistryClient, ArtifactRegistryGrpcTransport,
                  settings.artifact_registry_endpoint)


def logging_entries(settings: Settings) -> "LoggingServiceV2Client":
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
    from google.cloud.logging_v2.services.logging_service_v2.transports import LoggingServiceV2GrpcTransport

    return _build(LoggingServiceV2Client, LoggingServiceV2GrpcTransport, settings.logging_endpoint)


def monitoring_metrics(settings: Settings) -> "monitoring_v3.MetricServiceClient":
    from google.cloud import monitoring_v3
    from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

    return _build(monitoring_v3.MetricServiceClient, MetricServiceGrpcTransport, settings.monitoring_endpoint)


def cloud_tasks(settings: Settings) -> "tasks_v2.CloudTasksClient":
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    return _build(tasks_v2.CloudTasksClient, CloudTasksGrpcTransport, settings.cloud_tasks_endpoint)
