"""google.cloud.run.v2 Services and Revisions, served for real on loopback.

Each create/update whose template differs from the latest revision makes a new
revision (an unchanged template, e.g. a traffic-only update, makes none, as on
Cloud Run). Revisions of images with code here (images.py: local images, and those
a build pushed) run as processes in that code; the service URL and each traffic tag URL
are small routers in front of them. A revision naming an Artifact Registry image the
registry does not hold fails, as on Cloud Run ("Image '...' not found.").
"""
from __future__ import annotations

import re
import socket
import sys
import threading
import uuid
from typing import Callable

import grpc
from google.cloud import run_v2
from google.longrunning.operations_pb2 import Operation

from local.standin.common import ApiError, OperationStore, OutcomeRules, StandInConfig, clone, now, short_id
from local.standin.images import ImageNotFound, locate
from local.standin.jobs import Condition, State, ready_condition
from local.standin.log_files import LogFiles
from local.standin.processes import Supervisor, child_env, wait_answering
from local.standin.invoker import InvokerCheck
from local.standin.router import Backend, Router

SERVICES = "google.cloud.run.v2.Services"
REVISIONS = "google.cloud.run.v2.Revisions"
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


class ServicesService:
    def __init__(self, config: StandInConfig, operations: OperationStore, outcomes: OutcomeRules,
                 supervisor: Supervisor, on_served: Callable[[str, str, int, float], None] | None,
                 logs: LogFiles, images=None) -> None:
        self._cfg = config
        self._images = images  # the ArtifactRegistryService: which images exist, and their code
        self._logs = logs
        self._on_served = on_served  # (service, revision, status, latency ms): what Cloud Run's metrics count
        self._ops = operations
        self._outcomes = outcomes
        self._supervisor = supervisor
        self._services: dict[str, run_v2.Service] = {}
        self._revisions: dict[str, run_v2.Revision] = {}
        self._templates: dict[str, run_v2.RevisionTemplate] = {}  # revision name -> template it was made from
        self._backends: dict[str, Backend] = {}
        self._routers: dict[tuple[str, str], Router] = {}  # (service name, tag or "") -> router
        self.invokers = InvokerCheck()  # private services: ID token of a run.invoker holder, else 401/403
        self._counters: dict[str, int] = {}
        self._delays: list[tuple[str, float]] = []  # (service id substring, seconds): slow rollouts
        self._lock = threading.RLock()

    def register(self, registry) -> None:
        registry.add(SERVICES, "CreateService", self.create_service, run_v2.CreateServiceRequest, Operation)
        registry.add(SERVICES, "GetService", self.get_service, run_v2.GetServiceRequest, run_v2.Service)
        registry.add(SERVICES, "UpdateService", self.update_service, run_v2.UpdateServiceRequest, Operation)
        registry.add(SERVICES, "ListServices", self.list_services, run_v2.ListServicesRequest,
                     run_v2.ListServicesResponse)
        registry.add(REVISIONS, "GetRevision", self.get_revision, run_v2.GetRevisionRequest, run_v2.Revision)
        registry.add(REVISIONS, "ListRevisions", self.list_revisions, run_v2.ListRevisionsRequest,
                     run_v2.ListRevisionsResponse)

    def services(self) -> list[run_v2.Service]:
        with self._lock:
            return [clone(s) for s in self._services.values()]

    def revisions(self) -> list[run_v2.Revision]:
        with self._lock:
            return [clone(r) for r in self._revisions.values()]

    # -- RPCs ------------------------------------------------------------------------
    def create_service(self, request: run_v2.CreateServiceRequest) -> Operation:
        name = f"{request.parent}/services/{request.service_id}"
        with self._lock:
            if name in self._services:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{request.service_id}' already exists.")
            service = clone(request.service)
            service.name = name
            service.uid = str(uuid.uuid4())
            service.create_time = now()
            return self._apply(service, None)

    def update_service(self, request: run_v2.UpdateServiceRequest) -> Operation:
        name = request.service.name
        with self._lock:
            previous = self._services.get(name)
            if previous is None:
                if not request.allow_missing:
                    raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(name, "SERVICE"))
                parent, _, service_id = name.rpartition("/services/")
                return self.create_service(run_v2.CreateServiceRequest(
                    parent=parent, service=request.service, service_id=service_id))
            if request.update_mask.paths:
                service = clone(previous)
                for path in request.update_mask.paths:
                    field = path.split(".")[0]
                    setattr(service, field, getattr(request.service, field))
            else:
                service = clone(request.service)
                service.uid, service.create_time = previous.uid, previous.create_time
            service.generation = previous.generation
            delay = next((seconds for match, seconds in reversed(self._delays) if match in name), 0.0)
            if delay:
                return self._apply_later(service, previous, delay)
            return self._apply(service, previous)

    def delay_rollouts(self, match: str, seconds: float) -> None:
        """Updates of services whose name contains ``match`` take ``seconds`` to roll out: the
        operation stays running and the service reconciling, serving its old split, until then."""
        with self._lock:
            self._delays.append((match, float(seconds)))

    def _apply_later(self, service: run_v2.Service, previous: run_v2.Service, delay: float) -> Operation:
        pending = clone(previous)
        pending.reconciling = True
        self._services[previous.name] = pending
        op = self._ops.create(pending)

        def roll_out() -> None:
            with self._lock:
                try:
                    done = self._apply(service, previous)
                except ApiError as exc:
                    self._services[previous.name] = previous
                    self._ops.finish(op.name, error=(exc.code, str(exc)))
                    return
                if done.HasField("error"):
                    self._ops.finish(op.name, metadata=self._services[previous.name],
                                     error=(grpc.StatusCode.FAILED_PRECONDITION, done.error.message))
                else:
                    self._ops.finish(op.name, metadata=self._services[previous.name],
                                     response=self._services[previous.name])

        timer = threading.Timer(delay, roll_out)
        timer.daemon = True
        timer.start()
        return op

    def get_service(self, request: run_v2.GetServiceRequest) -> run_v2.Service:
        with self._lock:
            if request.name not in self._services:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name, "SERVICE"))
            return clone(self._services[request.name])

    def list_services(self, request: run_v2.ListServicesRequest) -> run_v2.ListServicesResponse:
        with self._lock:
            found = [clone(s) for n, s in self._services.items() if n.startswith(request.parent + "/services/")]
        return run_v2.ListServicesResponse(services=found)

    def get_revision(self, request: run_v2.GetRevisionRequest) -> run_v2.Revision:
        with self._lock:
            if request.name not in self._revisions:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name, "REVISION"))
            return clone(self._revisions[request.name])

    def list_revisions(self, request: run_v2.ListRevisionsRequest) -> run_v2.ListRevisionsResponse:
        with self._lock:
            found = [clone(r) for n, r in self._revisions.items() if n.startswith(request.parent + "/revisions/")]
        found.reverse()  # newest first
        return run_v2.ListRevisionsResponse(revisions=found)

    # -- the work --------------------------------------------------------------------
    def _apply(self, service: run_v2.Service, previous: run_v2.Service | None) -> Operation:
        service_id = service.name.rsplit("/", 1)[-1]
        check_template(service_id, service.template)
        service.generation += 1
        template = clone(service.template)  # compared as messages: map order differs on the wire
        latest = previous.latest_created_revision if previous else ""
        new_revision = None
        if not latest or self._templates.get(latest) != template:
            new_revision = self._new_revision_name(service, template)
        known = {n.rsplit("/", 1)[-1] for n in self._revisions if n.startswith(service.name + "/revisions/")}
        targets = list(service.traffic) or [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        _validate_traffic(targets, known | ({new_revision} if new_revision else set()))

        ready = previous.latest_ready_revision if previous else ""
        failure = None
        if new_revision:
            revision = self._make_revision(service, new_revision, template)
            outcome = self._start_backend(service_id, revision)
            if outcome == "HANG":  # the operation never completes, like a rollout stuck in Cloud Run
                service.reconciling = True
                self._services[service.name] = service
                return self._ops.create(service)
            service.latest_created_revision = revision.name
            if outcome == "READY":
                ready = revision.name
            else:
                failure = outcome
        service.latest_ready_revision = ready
        if failure is not None:
            # A failed revision takes no traffic: the previous split stays in force.
            service.traffic = list(previous.traffic) if previous else []
            service.traffic_statuses = list(previous.traffic_statuses) if previous else []
            service.terminal_condition = Condition(type_="Ready", state=State.CONDITION_FAILED, message=failure,
                                                   last_transition_time=now())
            service.observed_generation = service.generation
            self._services[service.name] = service
            op = self._ops.create(service)
            self._ops.finish(op.name, metadata=service, error=(grpc.StatusCode.FAILED_PRECONDITION, failure))
            return self._ops.get(op.name)
        self._route(service, targets)
        service.observed_generation = service.generation
        service.update_time = now()
        service.reconciling = False
        service.etag = short_id(12)
        service.terminal_condition = ready_condition()
        service.conditions = [ready_condition("RoutesReady"), ready_condition("ConfigurationsReady")]
        self._services[service.name] = service
        return self._ops.create(service, done=True, response=service)

    def _new_revision_name(self, service: run_v2.Service, template: run_v2.RevisionTemplate) -> str:
        requested = service.template.revision
        if requested:
            full = f"{service.name}/revisions/{requested}"
            if full in self._revisions and self._templates.get(full) != template:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS,
                               f"Revision named '{requested}' with different configuration already exists.")
            return requested
        count = self._counters.get(service.name, 0) + 1
        self._counters[service.name] = count
        return f"{service.name.rsplit('/', 1)[-1]}-{count:05d}-{short_id(3)}"

    def _make_revision(self, service: run_v2.Service, revision_id: str,
                       template: run_v2.RevisionTemplate) -> run_v2.Revision:
        name = f"{service.name}/revisions/{revision_id}"
        revision = run_v2.Revision(
            name=name, uid=str(uuid.uuid4()), generation=1, labels=dict(template.labels),
            annotations=dict(template.annotations), create_time=now(), service=service.name.rsplit("/", 1)[-1],
            scaling=template.scaling, containers=list(template.containers), timeout=template.timeout,
            service_account=template.service_account, observed_generation=1, etag=short_id(12),
            max_instance_request_concurrency=template.max_instance_request_concurrency,
            log_uri=self._logs.url("revisions", revision_id),  # GCP: a console link; here the served file
        )
        self._revisions[name] = revision
        self._templates[name] = template
        return revision

    def _start_backend(self, service_id: str, revision: run_v2.Revision) -> str:
        """Returns READY, HANG, or the message of why the revision failed."""
        revision_id = revision.name.rsplit("/", 1)[-1]
        container = revision.containers[0] if revision.containers else run_v2.Container()
        try:
            code = locate(container.image, self._cfg.local_images, self._cfg.workspace, self._images).root
        except ImageNotFound as missing:
            outcome = f"Revision '{revision_id}' is not ready and cannot serve traffic. {missing}"
            revision.conditions = [Condition(type_="Ready", state=State.CONDITION_FAILED, message=outcome,
                                             reason=Condition.CommonReason.CONTAINER_MISSING,
                                             last_transition_time=now())]
            return outcome
        if code is not None:
            port = _free_port()
            argv = list(container.command) + list(container.args) if container.command else [
                sys.executable, "-m", "sample_app.server"]
            env = {e.name: e.value for e in container.env} | {
                "PORT": str(port), "REVISION": revision_id, "K_SERVICE": service_id, "K_REVISION": revision_id}
            if code != self._cfg.workspace:  # an image's code: it imports its own modules, not ours
                env["PYTHONPATH"] = str(code)
            proc = self._supervisor.spawn(argv, cwd=code, env=child_env(env),
                                          log_path=self._logs.path("revisions", revision_id))
            # A revision that never answers is served anyway: the check stage must see it fail.
            wait_answering(port, proc, self._cfg.revision_ready_timeout_s)
            self._backends[revision.name] = Backend(revision_id, port)
            outcome = "READY"
        else:
            rule = self._outcomes.find("service", [service_id, revision_id])
            if rule is None:
                outcome = (f"Revision '{revision_id}' is not ready and cannot serve traffic. stand-in cannot run "
                           f"image {container.image}; no outcome set for service {service_id}")
            elif rule.outcome == "HANG":
                return "HANG"
            elif rule.outcome == "FAILURE":
                outcome = rule.detail or f"Revision '{revision_id}' is not ready and cannot serve traffic."
            else:
                self._backends[revision.name] = Backend(revision_id, None)
                outcome = "READY"
        ok = outcome == "READY"
        revision.conditions = [Condition(type_="Ready", last_transition_time=now(), message="" if ok else outcome,
                                         state=State.CONDITION_SUCCEEDED if ok else State.CONDITION_FAILED)]
        return outcome

    def _route(self, service: run_v2.Service, targets: list[run_v2.TrafficTarget]) -> None:
        def backend(target: run_v2.TrafficTarget) -> Backend | None:
            name = service.latest_ready_revision if target.type_ == LATEST else (
                f"{service.name}/revisions/{target.revision}")
            return self._backends.get(name)

        main = self._router(service.name, "")
        main.set_routes([(b, t.percent) for t in targets if (b := backend(t)) is not None])
        tags = {t.tag for t in targets if t.tag}
        statuses = []
        for target in targets:
            uri = ""
            if target.tag:
                tagged = self._router(service.name, target.tag)
                found = backend(target)
                tagged.set_routes([(found, 100)] if found else [])
                uri = tagged.url
            statuses.append(run_v2.TrafficTargetStatus(type_=target.type_, revision=target.revision,
                                                       percent=target.percent, tag=target.tag, uri=uri))
        for (name, tag), router in self._routers.items():
            if name == service.name and tag and tag not in tags:
                router.set_routes([])  # a removed tag's URL stops serving
        service.traffic = targets
        service.traffic_statuses = statuses
        service.uri = main.url
        service.urls = [main.url]

    def _router(self, service_name: str, tag: str) -> Router:
        key = (service_name, tag)
        if key not in self._routers:
            label = service_name.rsplit("/", 1)[-1] + (f"@{tag}" if tag else "")
            service_id = service_name.rsplit("/", 1)[-1]
            served = None if self._on_served is None else (
                lambda revision, status, ms: self._on_served(service_id, revision, status, ms))
            self._routers[key] = Router(label, served, gate=lambda request, url: self.invokers.refuse(
                service_id, request.headers, request.path, [url, self._routers[(service_name, "")].url]))
        return self._routers[key]

    def stop(self) -> None:
        with self._lock:
            routers, self._routers = list(self._routers.values()), {}
        for router in routers:
            router.stop()


# https://cloud.google.com/run/docs/configuring/labels (and
# https://cloud.google.com/resource-manager/docs/creating-managing-labels#requirements):
# "Keys have a minimum length of 1 character and a maximum length of 63 characters ... Values can be
#  empty, and have a maximum length of 63 characters. Keys and values can contain only lowercase
#  letters, numeric characters, underscores, and dashes." Keys must start with a lowercase letter.
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# The Cloud Run Admin API v2 reference, RevisionTemplate.revision
# (https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.services#revisiontemplate):
# "The unique name for the revision. If this field is omitted, it will be automatically generated
#  based on the Service name."; a given name is refused unless it is prefixed by the service's:
# "Revision name must be prefixed by the name of the enclosing Service or Configuration with a trailing -".
def check_template(service_id: str, template: run_v2.RevisionTemplate) -> None:
    for key, value in template.labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"template.labels: label {key!r}={value!r} is invalid: keys and values may contain only "
                           "lowercase letters, numeric characters, underscores and dashes (at most 63)")
    if template.revision and not template.revision.startswith(f"{service_id}-"):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"template.revision: Revision name must be prefixed by the name of the enclosing Service "
                       f"or Configuration with a trailing -: {template.revision!r} does not start with '{service_id}-'")


def _validate_traffic(targets: list[run_v2.TrafficTarget], revisions: set[str]) -> None:
    total = 0
    tags: set[str] = set()
    for target in targets:
        if target.type_ == BY_REVISION and target.revision not in revisions:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"spec.traffic: revision '{target.revision}' does not exist")
        if target.type_ not in (LATEST, BY_REVISION):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "spec.traffic: every target needs a type")
        if target.tag:
            if target.tag in tags:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"spec.traffic: tag '{target.tag}' used twice")
            tags.add(target.tag)
        total += target.percent
    if total != 100:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"spec.traffic: percents must add up to 100, got {total}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing(name: str, kind: str) -> str:
    parts = name.split("/")
    region = parts[3] if len(parts) > 3 else ""
    return f"Resource '{parts[-1]}' of kind '{kind}' in region '{region}' does not exist."
