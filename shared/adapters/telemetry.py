"""Telemetry of Cloud Run revisions for the canary analysis, through Cloud Monitoring and Cloud Logging.

One ``measure`` call gathers one window for ``diagnose`` and costs, per interval:
1. ListTimeSeries ``run.googleapis.com/request_count`` of the canary and the stable revision
   (one call, ``revision_name = one_of(...)``), summed per revision and response code class;
2. ListTimeSeries ``run.googleapis.com/request_latencies`` likewise, buckets summed per revision;
3. ListLogEntries of exactly the canary revision's own logs (not its request log) that are at
   or above the checklist's severity or match one of its patterns; up to one page of entries (pages
   the search answers empty while it goes on are followed) is the evidence;
4. ListLogEntries of the request log (``httpRequest.latency``) per revision (2 calls with a
   stable revision, 1 without), one page of the newest ``raw_samples`` entries, for the rank test.
So 5 calls per interval with a stable revision, 4 without (README: "Canary analysis").
"""
from __future__ import annotations

from itertools import islice

from datetime import datetime, timezone
from typing import Any, Iterable

from shared.domain.analysis import AnalysisTarget, Criteria, Distribution, LogLine, Measurements, RevisionTraffic

REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
REQUESTS_LOG = "run.googleapis.com%2Frequests"
MAX_PAGE = 1000  # ListLogEntries' page_size limit


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class CloudTelemetry:
    """Implements the ``Telemetry`` port with the real Monitoring and Logging clients."""

    def __init__(self, project: str, metrics_client: Any, logging_client: Any, raw_samples: int = MAX_PAGE) -> None:
        self._project = project
        self._metrics = metrics_client
        self._logging = logging_client
        self._raw_samples = min(raw_samples, MAX_PAGE)

    def measure(self, criteria: Criteria, target: AnalysisTarget, start: datetime, end: datetime) -> Measurements:
        revisions = [r for r in (target.canary_revision, target.stable_revision) if r]
        counts = self._request_counts(target.service, revisions, start, end)
        latencies = self._latencies(target.service, revisions, start, end)

        def traffic(revision: str | None) -> RevisionTraffic | None:
            if revision is None:
                return None
            total, errors = counts.get(revision, (0, 0))
            return RevisionTraffic(revision, total, errors, latencies.get(revision),
                                   tuple(self._raw_latencies(revision, start, end)))

        return Measurements(rfc3339(start), rfc3339(end), traffic(target.canary_revision),
                            traffic(target.stable_revision), tuple(self._error_logs(criteria, target, start, end)),
                            int((end - start).total_seconds()))

    # -- Cloud Monitoring ----------------------------------------------------------------------
    def _series(self, metric: str, service: str, revisions: list[str], start: datetime, end: datetime) -> Iterable:
        from google.cloud import monitoring_v3

        names = ", ".join(_quoted(r) for r in revisions)
        request = monitoring_v3.ListTimeSeriesRequest(
            name=f"projects/{self._project}",
            filter=f'metric.type = "{metric}" AND resource.type = "cloud_run_revision" AND '
                   f'resource.labels.service_name = {_quoted(service)} AND resource.labels.revision_name = one_of({names})',
            interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
            view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
        )
        return self._metrics.list_time_series(request=request)

    def _request_counts(self, service: str, revisions: list[str], start: datetime,
                        end: datetime) -> dict[str, tuple[int, int]]:
        counts: dict[str, list[int]] = {}
        for series in self._series(REQUEST_COUNT, service, revisions, start, end):
            revision = series.resource.labels["revision_name"]
            total = sum(point.value.int64_value for point in series.points)
            entry = counts.setdefault(revision, [0, 0])
            entry[0] += total
            if series.metric.labels.get("response_code_class") == "5xx":
                entry[1] += total
        return {revision: (total, errors) for revision, (total, errors) in counts.items()}

    def _latencies(self, service: str, revisions: list[str], start: datetime, end: datetime) -> dict[str, Distribution]:
        merged: dict[str, Distribution] = {}
        for series in self._series(REQUEST_LATENCIES, service, revisions, start, end):
            revision = series.resource.labels["revision_name"]
            for point in series.points:
                value = point.value.distribution_value
                dist = Distribution(bucket_bounds(value.bucket_options), tuple(value.bucket_counts))
                merged[revision] = _add(merged.get(revision), dist)
        return merged

    # -- Cloud Logging --------------------------------------------------------------------------
    def _entries(self, filter_: str, page_size: int) -> list:
        from google.cloud.logging_v2.types import ListLogEntriesRequest

        request = ListLogEntriesRequest(resource_names=[f"projects/{self._project}"], filter=filter_,
                                        order_by="timestamp desc", page_size=page_size)
        # Iterating the pager follows next_page_token: a page may come back empty while the search
        # goes on (ListLogEntriesResponse), so the first page alone could hide every offending line.
        return list(islice(self._logging.list_log_entries(request=request), page_size))

    def _window(self, revision: str, start: datetime, end: datetime) -> str:
        return (f'resource.type = "cloud_run_revision" AND resource.labels.revision_name = {_quoted(revision)} '
                f'AND timestamp >= "{rfc3339(start)}" AND timestamp < "{rfc3339(end)}"')

    def _error_logs(self, criteria: Criteria, target: AnalysisTarget, start: datetime, end: datetime) -> list[LogLine]:
        matches = [f"severity >= {criteria.log_severity}"] + [
            f"{field} =~ {_quoted(pattern)}" for pattern in criteria.log_patterns
            for field in ("textPayload", "jsonPayload.message")]
        filter_ = (f'{self._window(target.canary_revision, start, end)} AND NOT logName : "{REQUESTS_LOG}" '
                   f'AND ({" OR ".join(matches)})')
        lines = []
        for entry in reversed(self._entries(filter_, MAX_PAGE)):  # oldest first: the first offence leads
            text = entry.text_payload or (entry.json_payload.get("message", "") if entry.json_payload else "")
            lines.append(LogLine(rfc3339(entry.timestamp), _severity_name(entry.severity), str(text)))
        return lines

    def _raw_latencies(self, revision: str, start: datetime, end: datetime) -> list[float]:
        filter_ = f'{self._window(revision, start, end)} AND logName = "projects/{self._project}/logs/{REQUESTS_LOG}"'
        values = []
        for entry in self._entries(filter_, self._raw_samples):
            latency = entry.http_request.latency
            values.append(latency.seconds * 1000 + latency.nanos / 1e6)
        return values


def bucket_bounds(options: Any) -> tuple[float, ...]:
    """Cloud Monitoring's BucketOptions (explicit, exponential or linear) as explicit bounds."""
    if options.explicit_buckets.bounds:
        return tuple(options.explicit_buckets.bounds)
    if options.exponential_buckets.num_finite_buckets:
        exp = options.exponential_buckets
        return tuple(exp.scale * exp.growth_factor ** i for i in range(exp.num_finite_buckets + 1))
    lin = options.linear_buckets
    return tuple(lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1))


def _add(total: Distribution | None, more: Distribution) -> Distribution:
    if total is None:
        return more
    if total.bounds != more.bounds:  # a bucket layout change mid-window: keep the larger sample
        return total if sum(total.counts) >= sum(more.counts) else more
    width = max(len(total.counts), len(more.counts))
    padded = [list(c) + [0] * (width - len(c)) for c in (total.counts, more.counts)]
    return Distribution(total.bounds, tuple(a + b for a, b in zip(*padded)))


def _severity_name(value: Any) -> str:
    name = getattr(value, "name", None)
    if name:
        return name
    from google.logging.type import log_severity_pb2

    return log_severity_pb2.LogSeverity.Name(int(value))
