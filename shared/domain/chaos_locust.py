"""Locust reports as Locust writes them.

* ``locust --headless --csv PREFIX`` writes ``PREFIX_stats.csv``: one row per endpoint and a last
  ``Aggregated`` row with ``Request Count``, ``Failure Count``, ``Median Response Time`` and the
  percentile columns ``50%`` … ``100%`` (Locust before 1.0: ``# requests``, ``# failures``); and
  ``PREFIX_failures.csv``: ``Method,Name,Error,Occurrences,…``, one row per distinct error.
* ``locust --headless --json`` prints a JSON list of per-endpoint stats, each with
  ``num_requests``, ``num_failures``, ``num_none_requests`` and the ``response_times`` histogram
  (milliseconds rounded as Locust rounds them -> count); the P95 is computed the way Locust does.

Checked before a number is believed: every row has every column of the header; the endpoints add
up to the Aggregated row; percentiles do not fall as they rise and the 95 % is not below the median;
failures never exceed requests; a failures file, when beside the stats, counts the same failures.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Mapping

from shared.domain.chaos_report import (
    ArtifactError, Measurement, check_percentiles, count, mapping, measurement, text_count, text_number,
)

PERCENTILES = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")


def _rows(text: str, file: str, what: str) -> tuple[list[str], list[list[str]]]:
    if not text.strip():
        raise ArtifactError(f"{file}: the Locust {what} file is empty")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as exc:
        raise ArtifactError(f"{file}: not valid CSV ({exc})") from None
    header = rows[0]
    for number_, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ArtifactError(f"{file}: row {number_} has {len(row)} of the header's {len(header)} columns "
                                "(a cut or mis-shaped report)")
    return header, rows[1:]


def parse_locust(text: str, file: str = "locust") -> Measurement:
    if text.lstrip().startswith("["):
        return parse_locust_json(text, file)
    header, rows = _rows(text, file, "stats")
    if "Name" not in header:
        raise ArtifactError(f"{file}: no 'Name' column; not a Locust stats CSV")
    named = [dict(zip(header, row)) for row in rows]
    aggregated = [r for r in named if r["Name"].strip() == "Aggregated"]
    if len(aggregated) != 1:
        raise ArtifactError(f"{file}: {len(aggregated)} 'Aggregated' rows; a Locust stats CSV ends with one")
    total = aggregated[0]

    def column(row: Mapping[str, str], *names: str) -> str | None:
        name = next((n for n in names if n in header), None)
        if name is None:
            raise ArtifactError(f"{file}: no {names[0]!r} column; not a Locust stats CSV")
        return row[name]

    def counts(row: Mapping[str, str]) -> tuple[int, int]:
        where = f"the {row['Name']!r} row's"
        return (text_count(column(row, "Request Count", "# requests"), file, f"{where} Request Count"),
                text_count(column(row, "Failure Count", "# failures"), file, f"{where} Failure Count"))

    requests, errors = counts(total)
    endpoints = [counts(r) for r in named if r is not total]
    if endpoints and (sum(r for r, _ in endpoints), sum(e for _, e in endpoints)) != (requests, errors):
        raise ArtifactError(f"{file}: the endpoints' rows do not add up to the Aggregated row's {requests} "
                            f"requests and {errors} failures")
    if requests == 0:
        raise ArtifactError(f"{file}: Locust counted no requests")
    median = text_number(column(total, "Median Response Time", "Median response time"), file, "the Aggregated median")
    present = [p for p in PERCENTILES if p in header]
    if "95%" not in present:
        raise ArtifactError(f"{file}: no '95%' column; not a Locust stats CSV")
    values = {p: text_number(total[p], file, f"the Aggregated {p}") for p in present}
    check_percentiles(values.items(), file, "the Aggregated")
    check_percentiles((("median", median), ("95%", values["95%"])), file, "the Aggregated")
    return measurement("locust", "Locust stats CSV", file, requests, errors, values["95%"])


def failure_count(text: str, file: str) -> int:
    """The failures a ``_failures.csv`` counts (sum of ``Occurrences``); header only means none."""
    header, rows = _rows(text, file, "failures")
    if "Occurrences" not in header:
        raise ArtifactError(f"{file}: no 'Occurrences' column; not a Locust failures CSV")
    at = header.index("Occurrences")
    return sum(text_count(row[at], file, f"row {i} Occurrences") for i, row in enumerate(rows, start=2))


def check_failures(stats: Measurement, failures_text: str, failures_file: str) -> None:
    counted = failure_count(failures_text, failures_file)
    if counted != stats.errors:
        raise ArtifactError(f"{stats.file}: its {stats.errors} failures contradict the {counted} "
                            f"occurrences in {failures_file}")


def _locust_percentile(histogram: Mapping[float, int], total: int, percent: float) -> float:
    """Locust's calculate_response_time_percentile: walk down from the slowest bucket."""
    wanted = int(total * percent)
    processed = 0
    for response_time in sorted(histogram, reverse=True):
        processed += histogram[response_time]
        if total - processed <= wanted:
            return response_time
    return 0.0


def parse_locust_json(text: str, file: str = "locust") -> Measurement:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{file}: Locust --json output is a non-empty list of endpoint stats")
    requests = errors = 0
    histogram: dict[float, int] = {}
    for i, raw in enumerate(entries):
        entry = mapping(raw, file, f"entry {i}")
        where = f"entry {i} ({entry.get('method')} {entry.get('name')})"
        num = count(entry.get("num_requests"), file, f"{where} num_requests")
        failed = count(entry.get("num_failures"), file, f"{where} num_failures")
        none = count(entry.get("num_none_requests", 0), file, f"{where} num_none_requests")
        times = mapping(entry.get("response_times"), file, f"{where} response_times")
        timed = 0
        for key, value in times.items():
            try:
                bucket = float(key)
            except ValueError:
                raise ArtifactError(f"{file}: {where} response time {key!r} is not a number") from None
            n = count(value, file, f"{where} response_times[{key}]")
            histogram[bucket] = histogram.get(bucket, 0) + n
            timed += n
        if failed > num or timed != num - none:
            raise ArtifactError(f"{file}: {where} counts {num} requests, {failed} failures and {timed} timed "
                                f"responses besides {none} untimed; they do not add up")
        requests, errors = requests + num, errors + failed
    if requests == 0:
        raise ArtifactError(f"{file}: Locust counted no requests")
    p95 = _locust_percentile(histogram, requests, 0.95)
    return measurement("locust", "Locust --json", file, requests, errors, p95)
