"""Pieces every stand-in service shares: config, errors, faults, outcome rules, LRO store.

The stand-in speaks the real gRPC wire format, so the client libraries cannot tell
it from Google; what it does behind each call is deliberately small.
"""
from __future__ import annotations

import collections
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

OUTCOMES = ("SUCCESS", "FAILURE", "HANG")
KINDS = ("build", "job", "service")


@dataclass(frozen=True)
class StandInConfig:
    project: str = "local-project"
    project_number: str = "123456789012"
    region: str = "europe-west3"
    workspace: Path = Path(".")
    # Images whose build steps, job containers and revisions run as local processes.
    # An image matches by its full reference or by the reference without its tag/digest.
    local_images: frozenset[str] = frozenset({"local"})
    pubsub_emulator_host: str | None = None
    builds_topic: str = "cloud-builds"
    log_dir: Path = Path("test-output/standin")
    port: int = 0  # 0 = any free loopback port
    log_port: int = 0  # the HTTP port the log files are served on (log_files.py); 0 = any free one
    # How long a served revision may take to answer before it is served anyway.
    revision_ready_timeout_s: float = 10.0
    # Telemetry timing (monitoring_api.py, logging_api.py cite the figures): Cloud Run metrics are
    # sampled every 60 s and readable up to 180 s later; log entries after about 2 s.
    metric_sample_s: float = 60.0
    metric_delay_s: float = 180.0
    log_delay_s: float = 2.0
    # Cloud Tasks queues (full names) that exist from the start, and how long after its
    # schedule time a task is dispatched (GCP's dispatch latency, for benchmarks).
    task_queues: tuple[str, ...] = ()
    task_dispatch_delay_s: float = 0.0
    # Where Cloud Tasks gets the OIDC token of a task's service account (the local token issuer's
    # POST /token); empty: tasks are delivered without an Authorization header.
    id_token_url: str = ""
    # Service account keys the stand-in (as IAM) knows; build steps get their account's key.
    key_dir: Path = Path("test-output/standin-keys")


class ApiError(Exception):
    """Raised by a handler to answer the call with a gRPC status, like the real API."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def now() -> datetime:
    return datetime.now(timezone.utc)


def short_id(n: int = 5) -> str:
    return uuid.uuid4().hex[:n]


def clone(msg: Any) -> Any:
    """A deep copy of a proto-plus message (copies never share nested messages)."""
    cls = type(msg)
    return cls.deserialize(cls.serialize(msg))


def image_is_local(image: str, local_images: Iterable[str]) -> bool:
    bare = image.split("@", 1)[0]
    if ":" in bare.rsplit("/", 1)[-1]:
        bare = bare.rsplit(":", 1)[0]
    return image in local_images or bare in local_images


@dataclass
class OutcomeRule:
    kind: str
    match: str
    outcome: str
    detail: str = ""


class OutcomeRules:
    """What non-local builds, jobs and revisions do. The most recently set matching rule wins."""

    def __init__(self) -> None:
        self._rules: list[OutcomeRule] = []
        self._lock = threading.Lock()

    def set(self, kind: str, match: str, outcome: str, detail: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        with self._lock:
            self._rules.append(OutcomeRule(kind, match, outcome, detail))

    def find(self, kind: str, candidates: Iterable[str]) -> OutcomeRule | None:
        values = [c for c in candidates if c]
        with self._lock:
            for rule in reversed(self._rules):
                if rule.kind == kind and any(rule.match in value for value in values):
                    return rule
        return None


@dataclass
class _Fault:
    code: grpc.StatusCode
    message: str
    remaining: int


class Faults:
    """fail_next: the next N calls of a method answer a given status instead of working."""

    def __init__(self) -> None:
        self._pending: dict[str, list[_Fault]] = {}
        self._lock = threading.Lock()

    def fail_next(self, method: str, code: grpc.StatusCode, times: int = 1, message: str = "") -> None:
        name = method.rsplit("/", 1)[-1]
        with self._lock:
            self._pending.setdefault(name, []).append(
                _Fault(code, message or f"stand-in injected {code.name} for {name}", times)
            )

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, method: str) -> _Fault | None:
        with self._lock:
            queue = self._pending.get(method)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return fault


def pack(msg: Any) -> any_pb2.Any:
    """Pack a proto-plus (or plain protobuf) message into an Any the clients can unpack."""
    if hasattr(type(msg), "pb") and hasattr(type(msg), "serialize"):
        cls = type(msg)
        return any_pb2.Any(
            type_url=f"type.googleapis.com/{cls.pb().DESCRIPTOR.full_name}", value=cls.serialize(msg)
        )
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


class OperationStore:
    """Long-running operations shared by all services (google.longrunning.Operations)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._ops: dict[str, operations_pb2.Operation] = {}
        self._lock = threading.Lock()

    def create(self, metadata: Any, *, done: bool = False, response: Any = None) -> operations_pb2.Operation:
        op = operations_pb2.Operation(name=f"{self._prefix}/operations/{uuid.uuid4()}", metadata=pack(metadata))
        if done:
            op.done = True
            op.response.CopyFrom(pack(response))
        with self._lock:
            self._ops[op.name] = op
            return operations_pb2.Operation.FromString(op.SerializeToString())

    def finish(self, name: str, *, metadata: Any = None, response: Any = None,
               error: tuple[grpc.StatusCode, str] | None = None) -> None:
        with self._lock:
            op = self._ops[name]
            if metadata is not None:
                op.metadata.CopyFrom(pack(metadata))
            op.done = True
            if error is not None:
                op.error.CopyFrom(status_pb2.Status(code=error[0].value[0], message=error[1]))
            else:
                op.response.CopyFrom(pack(response))

    def update_metadata(self, name: str, metadata: Any) -> None:
        with self._lock:
            self._ops[name].metadata.CopyFrom(pack(metadata))

    def get(self, name: str) -> operations_pb2.Operation:
        with self._lock:
            op = self._ops.get(name)
            if op is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"operation {name} not found")
            return operations_pb2.Operation.FromString(op.SerializeToString())

    def list(self, prefix: str) -> list[operations_pb2.Operation]:
        with self._lock:
            return [operations_pb2.Operation.FromString(op.SerializeToString())
                    for name, op in self._ops.items() if name.startswith(prefix)]


def _codec(cls: type) -> tuple[Callable[[bytes], Any], Callable[[Any], bytes]]:
    if hasattr(cls, "FromString"):  # plain protobuf message
        return cls.FromString, cls.SerializeToString
    return cls.deserialize, cls.serialize


@dataclass
class Method:
    name: str
    handler: Callable[[Any], Any]
    request_type: type
    response_type: type


@dataclass
class Registry:
    """Builds the generic gRPC handlers; every call first passes the fault injector."""

    faults: Faults
    services: dict[str, list[Method]] = field(default_factory=dict)
    # guard(method, request, metadata) raises ApiError when the caller may not make the call.
    guard: Callable[[str, Any, dict], None] | None = None
    # Calls received per method, refused ones included (what the API's audit log would count).
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    _calls_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, service: str, name: str, handler: Callable[[Any], Any], request_type: type,
            response_type: type) -> None:
        self.services.setdefault(service, []).append(Method(name, handler, request_type, response_type))

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        handlers = []
        for service, methods in self.services.items():
            table = {}
            for method in methods:
                deserialize, _ = _codec(method.request_type)
                _, serialize = _codec(method.response_type)
                table[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._wrap(method), request_deserializer=deserialize, response_serializer=serialize
                )
            handlers.append(grpc.method_handlers_generic_handler(service, table))
        return handlers

    def _wrap(self, method: Method) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with self._calls_lock:  # one server, many threads
                self.calls[method.name] += 1
            fault = self.faults.take(method.name)
            if fault is not None:
                context.abort(fault.code, fault.message)
            try:
                if self.guard is not None:
                    self.guard(method.name, request, dict(context.invocation_metadata()))
                return method.handler(request)
            except ApiError as exc:
                context.abort(exc.code, exc.message)

        return call
