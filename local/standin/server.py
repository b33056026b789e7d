"""StandIn: one loopback gRPC server playing Cloud Build, Cloud Run v2, Resource Manager IAM, Secret Manager,
IAM's testIamPermissions on service accounts, the docker part of Artifact Registry, Cloud Tasks
(HTTP tasks), and Cloud Logging / Cloud Monitoring reads of the traffic the routers served.

The real client libraries talk to it through shared/adapters/gcp_clients.py when an endpoint
setting points here. Tests steer it in-process (set_outcome, fail_next,
set_iam_policy, push_image) and read what it recorded (builds, executions, services).
"""
from __future__ import annotations

import time
from concurrent import futures
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2

from local.standin.artifact_registry import ArtifactRegistryService
from local.standin.builds import CloudBuildService
from local.standin.common import ApiError, Faults, OperationStore, OutcomeRules, Registry, StandInConfig
from local.standin.iam import ProjectsIamService
from local.standin.iam_admin import IamAdminService
from local.standin.iam_guard import IamGuard
from local.standin.identity import KeyRing
from local.standin.jobs import JobsService
from local.standin.log_files import LogFiles
from local.standin.logging_api import LoggingService
from local.standin.monitoring_api import MetricService, MetricTiming, RequestRecorder, ServedRequest
from local.standin.notifications import BuildNotifier
from local.standin.processes import Supervisor
from local.standin.secrets import SecretManagerService
from local.standin.services import ServicesService
from local.standin.tasks import CloudTasksService

__all__ = ["StandIn", "StandInConfig"]
OPERATIONS = "google.longrunning.Operations"


class StandIn:
    def __init__(self, config: StandInConfig) -> None:
        self.config = config
        self._faults = Faults()
        self._outcomes = OutcomeRules()
        self._supervisor = Supervisor()
        self._operations = OperationStore(f"projects/{config.project}/locations/{config.region}")
        self._notifier = BuildNotifier(config.pubsub_emulator_host, config.project, config.builds_topic)
        self.logs = LogFiles(config.log_dir, config.log_port)  # served over HTTP: the log links
        self._artifacts = ArtifactRegistryService(config.log_dir / "images")  # the trees builds keep (images.py)
        self._builds = CloudBuildService(config, self._operations, self._outcomes, self._supervisor,
                                         self._on_build_update, self.logs)
        self._jobs = JobsService(config, self._operations, self._outcomes, self._supervisor, self.logs,
                                 images=self._artifacts)
        self.requests = RequestRecorder()
        self._services = ServicesService(config, self._operations, self._outcomes, self._supervisor,
                                         self._on_served, self.logs, images=self._artifacts)
        self.monitoring = MetricService(config.project, config.region, self.requests,
                                        MetricTiming(config.metric_sample_s, config.metric_delay_s))
        self.logging = LoggingService(config.project, config.region, self.requests, self._revision_ids,
                                      config.log_dir, config.log_delay_s)
        self._iam = ProjectsIamService()
        self._tasks = CloudTasksService(config.task_dispatch_delay_s, id_token_url=config.id_token_url)
        for queue in config.task_queues:
            self._tasks.add_queue(queue)
        self.guard = IamGuard(KeyRing(config.key_dir), config.project, config.project_number, self._iam.roles_of)
        self._builds.guard = self.guard
        self.secrets = SecretManagerService(config.project, config.project_number)
        self.guard.secret_roles = self.secrets.roles_on
        self._server: grpc.Server | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "StandIn":
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.logs.start()
        self._notifier.start()
        registry = Registry(self._faults, guard=self.guard.check)
        self.api_calls = registry.calls  # method name -> calls received
        for service in (self._builds, self._jobs, self._services, self._iam, self._artifacts, self._tasks,
                        IamAdminService(self.guard), self.monitoring, self.logging, self.secrets):
            service.register(registry)
        registry.add(OPERATIONS, "GetOperation", self._get_operation, operations_pb2.GetOperationRequest,
                     operations_pb2.Operation)
        registry.add(OPERATIONS, "ListOperations", self._list_operations, operations_pb2.ListOperationsRequest,
                     operations_pb2.ListOperationsResponse)
        registry.add(OPERATIONS, "DeleteOperation", lambda request: empty_pb2.Empty(),
                     operations_pb2.DeleteOperationRequest, empty_pb2.Empty)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="standin-rpc"))
        self._server.add_generic_rpc_handlers(registry.generic_handlers())
        self._port = self._server.add_insecure_port(f"127.0.0.1:{self.config.port}")
        if not self._port:
            raise OSError(f"stand-in cannot bind 127.0.0.1:{self.config.port}")
        self._server.start()
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._port}"

    def stop(self) -> None:
        """Stop serving and end every process (build steps, job tasks, revisions) it started."""
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
            self._server = None
        self._tasks.stop()
        self._builds.shutdown()
        self._jobs.shutdown()
        self._supervisor.stop_all()
        self._services.stop()
        self._notifier.stop()
        self.logs.stop()

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- steering ----------------------------------------------------------------------
    def set_outcome(self, kind: str, match: str, outcome: str, detail: str = "") -> None:
        """What a non-local build/job/service does when ``match`` is a substring of its
        build tags or id / job name or STAGE_RUN_ID / service or revision name.
        The most recently set matching rule wins."""
        self._outcomes.set(kind, match, outcome, detail)

    def delay_rollouts(self, match: str, seconds: float) -> None:
        """UpdateService of a service whose name contains ``match`` rolls out after ``seconds``."""
        self._services.delay_rollouts(match, seconds)

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1, message: str = "") -> None:
        """The next ``times`` calls of ``method`` (e.g. "CreateBuild") answer ``code`` with ``message``."""
        self._faults.fail_next(method, code, times, message)

    def clear_faults(self) -> None:
        """Forget every fault fail_next set that has not happened yet."""
        self._faults.clear()

    def set_iam_policy(self, bindings: dict[str, list[str]]) -> None:
        self._iam.set_bindings(bindings)

    def enforce_iam(self, account_bindings: dict[str, dict[str, list[str]]] | None = None,
                    custom_roles: dict[str, list[str]] | None = None,
                    queue_bindings: dict[str, dict[str, list[str]]] | None = None,
                    repository_bindings: dict[str, dict[str, list[str]]] | None = None) -> None:
        """From now on every call needs a valid token and the permission, against the project
        policy (set_iam_policy), ``account_bindings`` (account -> role -> members, e.g. who may
        act as it) and ``custom_roles`` (role name -> permissions)."""
        self.guard.enforce(account_bindings, custom_roles, queue_bindings, repository_bindings)

    def revoke(self, member: str, role: str, account: str = "", repository: str = "") -> None:
        """Remove ``role`` from ``member`` on the project, or on ``account`` / ``repository`` when given."""
        if account or repository:
            self.guard.revoke(member, role, account, repository)
        else:
            self._iam.revoke(member, role)

    def connect_repository(self, name: str, local_path: str, readers: tuple[str, ...] = ()) -> None:
        """A 2nd-gen repository ``projects/P/locations/L/connections/C/repositories/R`` standing for the
        local git repository ``local_path``; ``readers``: accounts holding accessReadToken on it."""
        self._builds.connect_repository(name, local_path, readers)

    def make_service_private(self, service_id: str, invokers: tuple[str, ...], certs) -> None:
        """Service ``service_id`` requires authentication: an ID token (signed by a key of ``certs()``,
        key id -> PEM) of one of ``invokers`` (the accounts holding roles/run.invoker on it)."""
        self._services.invokers.make_private(service_id, invokers, certs)

    def revoke_invoker(self, service_id: str, account: str) -> None:
        self._services.invokers.revoke(service_id, account)

    def grant_invoker(self, service_id: str, account: str) -> None:
        self._services.invokers.grant(service_id, account)

    def remove_queue(self, name: str) -> None:
        """Delete a Cloud Tasks queue: CreateTask on it is FAILED_PRECONDITION from now on."""
        self._tasks.remove_queue(name)

    def mark_private(self, url: str) -> None:
        """``url`` needs credentials: an anonymous gitSource of it fails at fetch, as on Cloud Build."""
        self._builds.mark_private(url)

    def push_image(self, image: str, digest: str = "") -> str:
        """Record ``LOCATION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG`` as pushed; returns its
        ``...@sha256:`` uri. The tag moves to this digest, as ``docker push`` moves it."""
        return self._artifacts.push(image, digest).uri

    def publish_build_notification(self, build_id: str, status: str) -> None:
        """Publish the build again with ``status`` (duplicate / out-of-order delivery tests)."""
        self._builds.republish(build_id, status)

    def flush_notifications(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued build notification reached the Pub/Sub emulator."""
        self._notifier.flush(timeout_s)

    # -- recorded state ----------------------------------------------------------------
    @property
    def dispatched_tasks(self) -> list:
        """Every Cloud Tasks dispatch: {name, scheduled, dispatched, status, attempt}, in order."""
        return list(self._tasks.dispatched)

    @property
    def builds(self) -> list:
        """Every build created, oldest first (cloudbuild_v1.Build copies)."""
        return self._builds.all()

    def build(self, build_id: str):
        return self._builds.snapshot(build_id)

    def finished_build(self, build_id: str, timeout_s: float = 30):
        """The build once it left QUEUED and WORKING (tests wait on it); AssertionError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            build = self.build(build_id)
            if build.status.name not in ("QUEUED", "WORKING"):
                return build
            time.sleep(0.05)
        raise AssertionError(f"build {build_id} did not end within {timeout_s} s")

    @property
    def docker_images(self) -> list:
        """Every pushed image, oldest first (artifactregistry_v1.DockerImage copies)."""
        return self._artifacts.images()

    @property
    def executions(self) -> list:
        """Every job execution, oldest first (run_v2.Execution copies)."""
        return self._jobs.executions()

    @property
    def services(self) -> list:
        """Every service in its current state (run_v2.Service copies)."""
        return self._services.services()

    @property
    def revisions(self) -> list:
        """Every revision, oldest first (run_v2.Revision copies)."""
        return self._services.revisions()

    def _on_served(self, service: str, revision: str, status: int, latency_ms: float) -> None:
        self.requests.record(ServedRequest(time.time(), service, revision, status, latency_ms))

    def _revision_ids(self) -> list[tuple[str, str]]:
        return [(r.service, r.name.rsplit("/", 1)[-1]) for r in self._services.revisions()]

    def _on_build_update(self, build) -> None:
        self._artifacts.observe_build(build)  # before the notification: a listener may look for the image
        self._notifier.publish(build)

    # -- google.longrunning.Operations ------------------------------------------------
    def _get_operation(self, request: operations_pb2.GetOperationRequest) -> operations_pb2.Operation:
        return self._operations.get(request.name)

    def _list_operations(self, request: operations_pb2.ListOperationsRequest) -> operations_pb2.ListOperationsResponse:
        if not request.name:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        return operations_pb2.ListOperationsResponse(operations=self._operations.list(request.name))
