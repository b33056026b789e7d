"""google.monitoring.v3.MetricService ListTimeSeries for Cloud Run's request metrics, from the
requests the stand-in's routers actually served.

What Cloud Run publishes, and when (https://cloud.google.com/monitoring/api/metrics_gcp#gcp-run):
``run.googleapis.com/request_count`` (DELTA, INT64) and ``run.googleapis.com/request_latencies``
(DELTA, DISTRIBUTION, ms), resource ``cloud_run_revision``, labels ``response_code`` and
``response_code_class``; both "Sampled every 60 seconds. After sampling, data is not visible
for up to 180 seconds." So a request is counted in the 60 s sample it fell into, and that
sample is readable only ``ingestion_delay_s`` after the sample's end. Both figures are
settings (``MetricTiming``) so tests can shorten them on purpose; the defaults are Google's.
"""
from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import grpc
from google.api import distribution_pb2, metric_pb2, monitored_resource_pb2
from google.cloud import monitoring_v3

from local.standin.common import ApiError

SERVICE = "google.monitoring.v3.MetricService"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
# Cloud Run does not document its latency buckets; exponential ones with a fine growth factor
# keep the P95 read from them within a few percent. Readers must use the options in the answer.
BUCKETS = distribution_pb2.Distribution.BucketOptions(
    exponential_buckets=distribution_pb2.Distribution.BucketOptions.Exponential(
        num_finite_buckets=80, growth_factor=1.2, scale=1.0))


@dataclass(frozen=True)
class MetricTiming:
    sample_period_s: float = 60.0  # "Sampled every 60 seconds"
    ingestion_delay_s: float = 180.0  # "After sampling, data is not visible for up to 180 seconds"


@dataclass(frozen=True)
class ServedRequest:
    at: float  # epoch seconds when the answer went out
    service: str
    revision: str
    status: int
    latency_ms: float


class RequestRecorder:
    """Every request a router forwarded to a revision, as Cloud Run's front end sees it."""

    def __init__(self) -> None:
        self._requests: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._listeners: list = []

    def record(self, request: ServedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(request)

    def listen(self, listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def between(self, start: float, end: float) -> list[ServedRequest]:
        with self._lock:
            return [r for r in self._requests if start <= r.at < end]


# https://cloud.google.com/monitoring/api/v3/filters: listing time series needs exactly one metric type;
# "metric.type = ..." and resource.labels.KEY / metric.labels.KEY comparisons
# joined by AND; one_of(...) for a set of values.
_CLAUSE = re.compile(r'^\s*([a-z_.]+)\s*=\s*(?:"([^"]*)"|one_of\(([^)]*)\))\s*$')


def parse_filter(text: str) -> dict[str, set[str]]:
    if not text.strip():
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "filter is required and must name a metric.type")
    wanted: dict[str, set[str]] = {}
    for clause in re.split(r"\s+AND\s+", text.strip()):
        match = _CLAUSE.match(clause)
        if not match:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"stand-in understands 'key = \"value\"' and 'key = one_of(...)' joined by AND, "
                           f"not {clause!r}")
        key, single, several = match.groups()
        values = {single} if single is not None else {v.strip().strip('"') for v in several.split(",")}
        wanted[key] = values
    if "metric.type" not in wanted or len(wanted["metric.type"]) != 1:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "the filter must specify a single metric type")
    return wanted


class MetricService:
    def __init__(self, project: str, region: str, recorder: RequestRecorder, timing: MetricTiming) -> None:
        self._project = project
        self._region = region
        self._recorder = recorder
        self._timing = timing
        self.calls = 0

    def register(self, registry) -> None:
        registry.add(SERVICE, "ListTimeSeries", self.list_time_series, monitoring_v3.ListTimeSeriesRequest,
                     monitoring_v3.ListTimeSeriesResponse)

    def list_time_series(self, request: monitoring_v3.ListTimeSeriesRequest) -> monitoring_v3.ListTimeSeriesResponse:
        self.calls += 1
        # ListTimeSeriesRequest: name, filter, interval and view are required.
        if not re.fullmatch(r"projects/[^/]+", request.name or ""):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "name must be projects/[PROJECT_ID_OR_NUMBER]")
        wanted = parse_filter(request.filter)
        if "interval" not in request or not request.interval.end_time:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "interval.end_time is required")
        aggregation = request.aggregation
        if aggregation.per_series_aligner or aggregation.cross_series_reducer or aggregation.group_by_fields:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "the stand-in returns raw points; aggregation is not served")
        end = request.interval.end_time.timestamp()
        start = request.interval.start_time.timestamp() if request.interval.start_time else end
        if start > end:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "interval.start_time is after interval.end_time")
        metric_type = next(iter(wanted["metric.type"]))
        if metric_type not in (REQUEST_COUNT, REQUEST_LATENCIES):
            return monitoring_v3.ListTimeSeriesResponse()
        if wanted.get("resource.type", {"cloud_run_revision"}) != {"cloud_run_revision"}:
            return monitoring_v3.ListTimeSeriesResponse()
        series = self._series(metric_type, wanted, start, end, time.time())
        if request.view == monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.HEADERS:
            for one in series:
                one.points = []
        return monitoring_v3.ListTimeSeriesResponse(time_series=series)

    def _series(self, metric_type: str, wanted: dict[str, set[str]], start: float, end: float,
                now: float) -> list[monitoring_v3.TimeSeries]:
        period = self._timing.sample_period_s
        # Samples whose end lies in (start, end] and that have been ingested by now.
        first_sample = math.floor(start / period) * period
        groups: dict[tuple[str, str, int], dict[float, list[ServedRequest]]] = {}
        for req in self._recorder.between(first_sample, end):
            sample_start = math.floor(req.at / period) * period
            sample_end = sample_start + period
            if not (start < sample_end <= end) or sample_end + self._timing.ingestion_delay_s > now:
                continue
            labels = self._labels(req)
            if not all(labels.get(key.split(".")[-1]) in values
                       for key, values in wanted.items() if key.startswith(("resource.labels.", "metric.labels."))):
                continue
            key = (req.service, req.revision, req.status if metric_type == REQUEST_COUNT else req.status // 100)
            groups.setdefault(key, {}).setdefault(sample_start, []).append(req)
        result = []
        for (service, revision, code), samples in sorted(groups.items()):
            points = [self._point(metric_type, sample_start, period, reqs)
                      for sample_start, reqs in sorted(samples.items(), reverse=True)]  # newest first
            metric_labels = {"response_code_class": f"{str(code)[0]}xx"}
            if metric_type == REQUEST_COUNT:
                metric_labels["response_code"] = str(code)
            result.append(monitoring_v3.TimeSeries(
                metric=metric_pb2.Metric(type=metric_type, labels=metric_labels),
                resource=monitored_resource_pb2.MonitoredResource(type="cloud_run_revision", labels={
                    "project_id": self._project, "location": self._region, "service_name": service,
                    "revision_name": revision, "configuration_name": service}),
                metric_kind=metric_pb2.MetricDescriptor.MetricKind.DELTA,
                value_type=(metric_pb2.MetricDescriptor.ValueType.INT64 if metric_type == REQUEST_COUNT
                            else metric_pb2.MetricDescriptor.ValueType.DISTRIBUTION),
                unit="1" if metric_type == REQUEST_COUNT else "ms",
                points=points,
            ))
        return result

    def _labels(self, req: ServedRequest) -> dict[str, str]:
        return {"project_id": self._project, "location": self._region, "service_name": req.service,
                "revision_name": req.revision, "configuration_name": req.service,
                "response_code": str(req.status), "response_code_class": f"{req.status // 100}xx"}

    @staticmethod
    def _point(metric_type: str, sample_start: float, period: float, reqs: list[ServedRequest]) -> monitoring_v3.Point:
        interval = monitoring_v3.TimeInterval(start_time=_ts(sample_start), end_time=_ts(sample_start + period))
        if metric_type == REQUEST_COUNT:
            return monitoring_v3.Point(interval=interval, value=monitoring_v3.TypedValue(int64_value=len(reqs)))
        return monitoring_v3.Point(interval=interval, value=monitoring_v3.TypedValue(
            distribution_value=distribution([r.latency_ms for r in reqs])))


def distribution(latencies_ms: list[float]) -> distribution_pb2.Distribution:
    exp = BUCKETS.exponential_buckets
    counts = [0] * (exp.num_finite_buckets + 2)
    for value in latencies_ms:
        # Exponential buckets: bucket i (1..N) holds [scale*g^(i-1), scale*g^i); 0 underflow, N+1 overflow.
        if value < exp.scale:
            index = 0
        else:
            index = min(int(math.log(value / exp.scale, exp.growth_factor)) + 1, exp.num_finite_buckets + 1)
        counts[index] += 1
    n = len(latencies_ms)
    mean = sum(latencies_ms) / n if n else 0.0
    return distribution_pb2.Distribution(
        count=n, mean=mean, sum_of_squared_deviation=sum((v - mean) ** 2 for v in latencies_ms),
        bucket_options=BUCKETS, bucket_counts=counts)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


__all__ = ["MetricService", "MetricTiming", "RequestRecorder", "ServedRequest"]
