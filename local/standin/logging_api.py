"""google.logging.v2.LoggingServiceV2 ListLogEntries over the logs Cloud Run would have written.

Two logs per revision, as on Cloud Run (https://cloud.google.com/run/docs/logging):
- ``run.googleapis.com/requests``: one entry per request a router served, with ``httpRequest``
  (status, latency …); severity ERROR for 5xx, WARNING for 4xx, INFO otherwise.
- ``run.googleapis.com/stdout``: what the revision's process printed. A JSON line is a structured
  entry (``severity``, ``message``, ``time`` are the special fields of
  https://cloud.google.com/logging/docs/structured-logging; the rest is ``jsonPayload``),
  any other line a ``textPayload`` entry of severity DEFAULT.
An entry is readable ``delay_s`` after it was written. Google gives no figure for ingestion;
``entries.tail`` buffers 2 s by default "to prevent out of order results due to late arriving
log entries" (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/tail), so 2 s.

Filters: the subset of the Logging query language (https://cloud.google.com/logging/docs/view/
logging-query-language) the adapters use: comparisons ``= != < <= > >= : =~ !~`` on dotted
fields, AND (also implicit), OR (binds tighter than AND, as documented), NOT, parentheses.
Anything else is refused with INVALID_ARGUMENT naming what the stand-in did not understand.
"""
from __future__ import annotations

import json
import re
import shlex
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import grpc
from google.api import monitored_resource_pb2
from google.cloud.logging_v2.types import ListLogEntriesRequest, ListLogEntriesResponse, LogEntry
from google.logging.type import http_request_pb2, log_severity_pb2
from google.protobuf import duration_pb2, struct_pb2

from local.standin.common import ApiError
from local.standin.monitoring_api import RequestRecorder, ServedRequest

SERVICE = "google.logging.v2.LoggingServiceV2"
SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")
MAX_PAGE_SIZE = 1000  # ListLogEntriesRequest.page_size: default 50, negative or over 1000 is rejected
MAX_FILTER_CHARS = 20_000  # "Length of a Logging query language query: 20,000 characters" (quotas page)


@dataclass
class Entry:
    written_at: float
    fields: dict[str, Any]  # the entry as the query language sees it (logName, resource.labels …)


class LoggingService:
    def __init__(self, project: str, region: str, recorder: RequestRecorder, revision_logs: Callable[[], list],
                 log_dir: Path, delay_s: float = 2.0) -> None:
        self._project = project
        self._region = region
        self._revision_logs = revision_logs  # () -> [(service, revision id)] of revisions that ran
        self._log_dir = log_dir
        self._delay_s = delay_s
        # https://cloud.google.com/logging/docs/reference/v2/rpc/google.logging.v2#listlogentriesresponse:
        # "If a value for next_page_token appears and the entries field is empty, it means that the
        # search found no log entries so far but it did not have time to search all the possible log
        # entries." Tests switch this on to make every search answer so once before its entries.
        self.empty_first_pages = False
        self._entries: list[Entry] = []
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self.calls = 0
        recorder.listen(self._request_entry)

    def register(self, registry) -> None:
        registry.add(SERVICE, "ListLogEntries", self.list_log_entries, ListLogEntriesRequest, ListLogEntriesResponse)

    # -- what gets written ------------------------------------------------------------------
    def _resource(self, service: str, revision: str) -> dict[str, Any]:
        return {"type": "cloud_run_revision", "labels": {
            "project_id": self._project, "location": self._region, "service_name": service,
            "revision_name": revision, "configuration_name": service}}

    def _log_name(self, log_id: str) -> str:
        return f"projects/{self._project}/logs/{log_id.replace('/', '%2F')}"

    def _request_entry(self, req: ServedRequest) -> None:
        severity = "ERROR" if req.status >= 500 else "WARNING" if req.status >= 400 else "INFO"
        fields = {"logName": self._log_name("run.googleapis.com/requests"),
                  "resource": self._resource(req.service, req.revision), "severity": severity,
                  "timestamp": req.at, "httpRequest": {"status": req.status, "latency": f"{req.latency_ms / 1000:.6f}s"}}
        with self._lock:
            self._entries.append(Entry(req.at, fields))

    def _ingest_stdout(self) -> None:
        """Read what each revision printed since the last call (Cloud Run's log agent, lazily)."""
        for service, revision in self._revision_logs():
            path = self._log_dir / "revisions" / f"{revision}.log"
            try:
                with path.open("rb") as handle:
                    handle.seek(self._offsets.get(revision, 0))
                    data = handle.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[revision] = self._offsets.get(revision, 0) + len(complete)
            seen_at = time.time()
            for raw in complete.decode("utf-8", "replace").splitlines():
                if raw.strip():
                    self._entries.append(self._stdout_entry(service, revision, raw, seen_at))

    def _stdout_entry(self, service: str, revision: str, raw: str, seen_at: float) -> Entry:
        fields: dict[str, Any] = {"logName": self._log_name("run.googleapis.com/stdout"),
                                  "resource": self._resource(service, revision), "severity": "DEFAULT"}
        written = seen_at
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            severity = str(payload.pop("severity", "DEFAULT")).upper()
            fields["severity"] = severity if severity in SEVERITIES else "DEFAULT"
            stamp = payload.pop("time", None) or payload.pop("timestamp", None)
            if isinstance(stamp, str):
                try:
                    written = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    pass
            fields["jsonPayload"] = payload
        else:
            fields["textPayload"] = raw
        fields["timestamp"] = written
        return Entry(written, fields)

    # -- ListLogEntries -----------------------------------------------------------------------
    def list_log_entries(self, request: ListLogEntriesRequest) -> ListLogEntriesResponse:
        self.calls += 1
        if not request.resource_names:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "resource_names is required")
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be from 0 to {MAX_PAGE_SIZE}")
        if len(request.filter) > MAX_FILTER_CHARS:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"filter is longer than {MAX_FILTER_CHARS} characters")
        order = (request.order_by or "timestamp asc").strip().lower()
        if order not in ("timestamp asc", "timestamp desc"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "order_by must be 'timestamp asc' or 'timestamp desc'")
        matches = parse_query(request.filter) if request.filter.strip() else (lambda fields: True)
        projects = {name.split("/", 1)[1] for name in request.resource_names if name.startswith("projects/")}
        now = time.time()
        with self._lock:
            self._ingest_stdout()
            visible = [e for e in self._entries if e.written_at + self._delay_s <= now]
        chosen = [e for e in visible if self._project in projects and matches(e.fields)]
        chosen.sort(key=lambda e: e.fields["timestamp"], reverse=order.endswith("desc"))
        if self.empty_first_pages and not request.page_token:
            return ListLogEntriesResponse(entries=[], next_page_token="0")
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = chosen[start:start + size]
        token = str(start + size) if start + size < len(chosen) else ""
        return ListLogEntriesResponse(entries=[self._proto(e.fields) for e in page], next_page_token=token)

    @staticmethod
    def _proto(fields: dict[str, Any]) -> LogEntry:
        entry = LogEntry(log_name=fields["logName"], severity=log_severity_pb2.LogSeverity.Value(fields["severity"]),
                         timestamp=datetime.fromtimestamp(fields["timestamp"], tz=timezone.utc),
                         resource=monitored_resource_pb2.MonitoredResource(
                             type=fields["resource"]["type"], labels=fields["resource"]["labels"]))
        if "textPayload" in fields:
            entry.text_payload = fields["textPayload"]
        if "jsonPayload" in fields:
            payload = struct_pb2.Struct()
            payload.update(fields["jsonPayload"])
            entry.json_payload = payload
        if "httpRequest" in fields:
            seconds = float(fields["httpRequest"]["latency"].rstrip("s"))
            entry.http_request = http_request_pb2.HttpRequest(
                status=fields["httpRequest"]["status"],
                latency=duration_pb2.Duration(seconds=int(seconds), nanos=int(round((seconds % 1) * 1e9))))
        return entry


# --- the query language subset ---------------------------------------------------------------

_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|=~|!~|!=|>=|<=|[=<>:]|[^\s()=<>:!"]+)')


def _tokens(text: str) -> list[str]:
    position, out = 0, []
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            if text[position:].strip():
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the filter at {text[position:]!r}")
            break
        out.append(match.group(1))
        position = match.end()
    return out


def parse_query(text: str) -> Callable[[dict[str, Any]], bool]:
    tokens = _tokens(text)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "the filter ends too early")
        position += 1
        return tokens[position - 1]

    def conjunction():  # AND, explicit or implicit, binds loosest
        parts = [disjunction()]
        while peek() not in (None, ")"):
            if peek() == "AND":
                take()
            parts.append(disjunction())
        return lambda f: all(p(f) for p in parts)

    def disjunction():
        parts = [negation()]
        while peek() == "OR":
            take()
            parts.append(negation())
        return lambda f: any(p(f) for p in parts)

    def negation():
        if peek() in ("NOT", "-"):
            take()
            inner = negation()
            return lambda f: not inner(f)
        if peek() == "(":
            take()
            inner = conjunction()
            if take() != ")":
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "unbalanced parentheses in the filter")
            return inner
        return comparison()

    def comparison():
        field = take()
        op = take()
        if op not in ("=", "!=", "<", "<=", ">", ">=", ":", "=~", "!~"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"expected a comparison after {field!r}, got {op!r}")
        raw = take()
        value = shlex.split(raw)[0] if raw.startswith('"') else raw
        if op in ("=~", "!~"):
            pattern = re2_pattern(value)
            return lambda f: _matches(_lookup(f, field), op == "=~", pattern)
        return lambda f: _compare(_lookup(f, field), op, value, field)

    predicate = conjunction()
    if position != len(tokens):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {tokens[position]!r} in the filter")
    return predicate


def re2_pattern(text: str) -> Any:
    """The pattern of ``=~``/``!~`` compiled as Logging compiles it: RE2, not Python's ``re``.

    https://cloud.google.com/logging/docs/view/logging-query-language#regular-expressions: the
    query language's regular expressions use RE2 syntax (https://github.com/google/re2/wiki/Syntax),
    which has no lookaround, backreferences, possessive quantifiers or atomic groups; Logging
    refuses a query whose pattern RE2 cannot compile as an invalid argument (INVALID_ARGUMENT).
    The google-re2 package is RE2 itself, so what it refuses is what Logging's parser refuses.
    """
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(text, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"invalid regular expression {text!r} (RE2 syntax): {reason}") from None


def _matches(actual: Any, wanted: bool, pattern: Any) -> bool:
    if actual is None:
        return not wanted  # a missing field matches no pattern
    return (pattern.search(str(actual)) is not None) is wanted


def _lookup(fields: dict[str, Any], path: str) -> Any:
    value: Any = fields
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _compare(actual: Any, op: str, wanted: str, field: str) -> bool:
    if actual is None:
        return op in ("!=", "!~")
    if field == "severity":
        actual, wanted_key = SEVERITIES.index(actual), SEVERITIES.index(wanted.upper()) if wanted.upper() in \
            SEVERITIES else -1
        if wanted_key < 0:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown severity {wanted!r}")
        other: Any = wanted_key
    elif field == "timestamp":
        other = datetime.fromisoformat(wanted.replace("Z", "+00:00")).timestamp()
    elif isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            other = float(wanted)
        except ValueError:
            return False
    else:
        actual, other = str(actual), wanted
    if op == ":":
        return str(other).lower() in str(actual).lower()
    return {"=": actual == other, "!=": actual != other, "<": actual < other, "<=": actual <= other,
            ">": actual > other, ">=": actual >= other}[op]
