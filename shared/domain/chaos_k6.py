"""k6 reports as k6 writes them.

* ``k6 run --summary-export=FILE``: ``metrics.<name>`` holds the values flat. A rate metric is
  ``{"passes": P, "fails": F, "value": P/(P+F)}`` where ``passes`` counts the non-zero samples, so
  for ``http_req_failed`` ``passes`` are the FAILED requests; a trend is ``{"avg", "min", "med",
  "max", "p(90)", "p(95)"}`` (the ``summaryTrendStats``); a counter ``{"count", "rate"}``.
* ``handleSummary(data)`` writing ``JSON.stringify(data)``: ``metrics.<name>`` is ``{"type",
  "contains", "values": {...}}``; a rate's values are ``{"rate", "passes", "fails"}``.
* ``k6 run --out json=FILE``: one JSON object a line, ``{"type": "Metric", ...}`` declarations and
  ``{"type": "Point", "data": {"time", "value", "tags"}, "metric": NAME}`` samples; the counts and
  the P95 are computed from the samples (k6's own percentile: linear between the two nearest ranks).

Checked before a number is believed: ``http_req_failed`` passes + fails equal ``http_reqs`` count
and its rate their ratio; min <= med <= p(90) <= p(95) <= p(99) <= max. A stream must hold as many
``http_req_failed`` as ``http_reqs`` and ``http_req_duration`` samples (a stream cut between two
requests is indistinguishable from a shorter run; prefer the summary export).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from shared.domain.chaos_report import (
    ArtifactError, Measurement, check_percentiles, check_rate, count, mapping, measurement, number,
)

TREND_ORDER = ("min", "med", "p(90)", "p(95)", "p(99)", "max")
NO_HTTP = "no http_req_failed metric (k6 writes it for HTTP requests since v0.31)"


def parse_k6(text: str, file: str = "k6") -> Measurement:
    if not text.strip():
        raise ArtifactError(f"{file}: the k6 report is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return parse_k6_stream(text, file)
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from None
    if isinstance(data, Mapping) and data.get("type") in ("Metric", "Point"):
        return parse_k6_stream(text, file)  # a stream of a single line
    metrics = mapping(data.get("metrics") if isinstance(data, Mapping) else None, file, "the k6 'metrics' object")
    return _summary(metrics, file)


def _summary(metrics: Mapping[str, Any], file: str) -> Measurement:
    failed_raw = metrics.get("http_req_failed")
    if failed_raw is None:
        raise ArtifactError(f"{file}: {NO_HTTP}")
    failed = mapping(failed_raw, file, "metrics.http_req_failed")
    handle_summary = "values" in failed
    dialect = "k6 handleSummary JSON" if handle_summary else "k6 summary export"

    def values(name: str) -> Mapping[str, Any]:
        raw = mapping(metrics.get(name), file, f"metrics.{name}")
        if handle_summary != ("values" in raw):
            raise ArtifactError(f"{file}: metrics.{name} mixes the summary-export and handleSummary shapes")
        return mapping(raw["values"], file, f"metrics.{name}.values") if handle_summary else raw

    failed = values("http_req_failed")
    errors = count(failed.get("passes"), file, "http_req_failed.passes (failed requests)")
    succeeded = count(failed.get("fails"), file, "http_req_failed.fails (requests that did not fail)")
    requests = errors + succeeded
    rate_key = "rate" if handle_summary else "value"
    if requests == 0:
        raise ArtifactError(f"{file}: the {dialect} counts no requests")
    if rate_key in failed:
        check_rate(number(failed[rate_key], file, f"http_req_failed.{rate_key}"), errors, requests, file,
                   f"http_req_failed.{rate_key}")
    if "http_reqs" in metrics:
        reqs = count(values("http_reqs").get("count"), file, "http_reqs.count")
        if reqs != requests:
            raise ArtifactError(f"{file}: http_reqs.count {reqs} contradicts http_req_failed's {errors} + {succeeded}")
    duration = values("http_req_duration")
    trend = {key: number(duration[key], file, f"http_req_duration.{key}") for key in TREND_ORDER if key in duration}
    if "p(95)" not in trend:
        raise ArtifactError(f"{file}: http_req_duration has no p(95) (add it to summaryTrendStats)")
    check_percentiles(((key, trend.get(key)) for key in TREND_ORDER), file, "http_req_duration")
    return measurement("k6", dialect, file, requests, errors, trend["p(95)"])


def _percentile(ordered: list[float], q: float) -> float:
    """k6's trend percentile: linear interpolation between the two nearest ranks."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_k6_stream(text: str, file: str = "k6") -> Measurement:
    samples: dict[str, list[float]] = {"http_reqs": [], "http_req_failed": [], "http_req_duration": []}
    for number_, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ArtifactError(f"{file}: line {number_} is not a JSON object (a cut or corrupted k6 stream)") from None
        if not isinstance(entry, Mapping) or entry.get("type") not in ("Metric", "Point"):
            raise ArtifactError(f"{file}: line {number_} is neither a k6 Metric nor a Point")
        metric = entry.get("metric")
        if entry["type"] == "Point" and isinstance(metric, str) and metric in samples:
            data = mapping(entry.get("data"), file, f"line {number_} data")
            samples[metric].append(number(data.get("value"), file, f"line {number_} value"))
    reqs, failed, durations = samples["http_reqs"], samples["http_req_failed"], samples["http_req_duration"]
    if not failed:
        raise ArtifactError(f"{file}: {NO_HTTP}")
    if any(value not in (0.0, 1.0) for value in failed):
        raise ArtifactError(f"{file}: an http_req_failed sample is neither 0 nor 1")
    requests = int(sum(reqs))
    if not (requests == len(failed) == len(durations)):
        raise ArtifactError(f"{file}: the stream holds {requests} http_reqs, {len(failed)} http_req_failed and "
                            f"{len(durations)} http_req_duration samples; a complete run holds as many of each")
    p95 = _percentile(sorted(durations), 0.95)
    return measurement("k6", "k6 JSON stream", file, requests, int(sum(failed)), p95)
