"""A cut or corrupted report never passes with other numbers.

Each real report (tests/unit/data/chaos/SOURCES.md) is cut at every byte and has single fields
corrupted (emptied, made non-numeric, negative or non-finite, removed, or given another type). Every
verdict is then either the uncut report's verdict with the same numbers, or a failure whose reason
names the file."""
from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain import chaos

DATA = Path(__file__).parent / "data" / "chaos"
FIXTURES = {
    "k6_export_crush_test_1595.json": "k6",
    "k6_export_crush_test_1601.json": "k6",
    "locust_healthy_stats.csv": "locust",
    "locust_faulty_stats.csv": "locust",
    "locust_healthy.json": "locust",
    "locust_faulty.json": "locust",
    "pytest_healthy_junit.xml": "junit",
    "pytest_faulty_junit.xml": "junit",
    "node_healthy_junit.xml": "junit",
    "node_faulty_junit.xml": "junit",
    "pytest_healthy_report.json": "json",
    "pytest_faulty_report.json": "json",
    "pytest_rerun_junit.xml": "junit",
    "pytest_rerun_report.json": "json",
}
# Limits between the healthy and the faulty runs' figures, so a changed number can flip a verdict.
LIMITS = (0.05, 15.5)


def numbers(m: chaos.Measurement) -> tuple:
    return (m.requests, m.errors, m.p95_ms)


def judged(kind: str, name: str, text: str) -> tuple[dict, str]:
    """The verdict on ``text`` as if it were the report ``name``; parsers take content and a name,
    so no file is written."""
    try:
        measurement = chaos.parse_report(kind, text, name)
    except chaos.ArtifactError as exc:
        return chaos.judge([], [str(exc)], *LIMITS), name
    return chaos.judge([measurement], [], *LIMITS), name


UNCUT = {name: chaos.parse_report(kind, (DATA / name).read_text(), name) for name, kind in FIXTURES.items()}


def assert_same_or_named_failure(kind: str, name: str, text: str) -> None:
    verdict, _ = judged(kind, name, text)
    if verdict["sources"]:
        source = verdict["sources"][0]
        uncut = UNCUT[name]
        assert (source["requests"], source["errors"], source["p95_ms"]) == numbers(uncut), text[-200:]
        assert verdict["passed"] == chaos.judge([uncut], [], *LIMITS)["passed"]
    else:
        assert not verdict["passed"]
        assert verdict["reasons"] and verdict["reasons"][0].startswith(f"{name}: "), verdict["reasons"]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_a_report_cut_at_any_byte_keeps_its_numbers_or_fails_by_name(name):
    kind, text = FIXTURES[name], (DATA / name).read_text()
    for end in range(len(text)):
        assert_same_or_named_failure(kind, name, text[:end])


def test_the_uncut_reports_span_both_verdicts():
    verdicts = {name: chaos.judge([m], [], *LIMITS)["passed"] for name, m in UNCUT.items() if m.p95_ms is not None}
    assert set(verdicts.values()) == {True, False}, verdicts


# Corruptions of one field: what a broken writer, a bad merge or a cut-and-paste leaves behind.
JSON_CORRUPTIONS = ["remove", "", "x", "negative", float("nan"), float("inf"), "as text", "as object"]
TEXT_CORRUPTIONS = ["remove", "", "x", "-1", "nan", "inf", "1e999"]


def json_leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from json_leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from json_leaves(value, (*path, i))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield path


def corrupt_json(text: str, pick: int, how) -> str:
    data = json.loads(text)
    leaves = list(json_leaves(data))
    *parents, last = leaves[pick % len(leaves)]
    holder = data
    for key in parents:
        holder = holder[key]
    value = holder[last]
    if how == "remove":
        if isinstance(holder, dict):
            del holder[last]
        else:
            holder.pop(last)
    else:
        holder[last] = {"negative": -abs(value) - 1, "as text": str(value), "as object": {"value": value}}.get(how, how)
    return json.dumps(data)


def corrupt_csv(text: str, pick: int, how: str) -> str:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    cells = [(r, c) for r in range(1, len(rows)) for c in range(2, len(rows[r]))]
    r, c = cells[pick % len(cells)]
    if how == "remove":
        del rows[r][c]
    else:
        rows[r][c] = how
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def corrupt_xml(text: str, pick: int, how: str) -> str:
    root = ElementTree.fromstring(text)
    slots = [(el, attr) for el in root.iter() for attr in ("tests", "failures", "errors", "skipped") if attr in el.attrib]
    el, attr = slots[pick % len(slots)]
    if how == "remove":
        del el.attrib[attr]
    else:
        el.set(attr, how)
    return ElementTree.tostring(root, encoding="unicode")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FIXTURES)), pick=st.integers(0, 10_000), data=st.data())
def test_a_corrupted_field_keeps_the_numbers_or_fails_by_name(name, pick, data):
    kind, text = FIXTURES[name], (DATA / name).read_text()
    if name.endswith(".json"):
        corrupted = corrupt_json(text, pick, data.draw(st.sampled_from(JSON_CORRUPTIONS)))
    elif name.endswith(".csv"):
        corrupted = corrupt_csv(text, pick, data.draw(st.sampled_from(TEXT_CORRUPTIONS)))
    else:
        corrupted = corrupt_xml(text, pick, data.draw(st.sampled_from(TEXT_CORRUPTIONS)))
    assert_same_or_named_failure(kind, name, corrupted)


def test_the_corruptions_reach_the_fields_that_decide():
    # A corrupted Failure Count of the Aggregated row, or k6's failed-request count, is never believed.
    stats = (DATA / "locust_faulty_stats.csv").read_text()
    aggregated_failures = re.search(r"\n,Aggregated,\d+,(\d+),", stats)
    assert aggregated_failures
    for how in TEXT_CORRUPTIONS:
        rows = list(csv.reader(io.StringIO(stats, newline="")))
        pick = [(r, c) for r in range(1, len(rows)) for c in range(2, len(rows[r]))].index((len(rows) - 1, 3))
        verdict, _ = judged("locust", "locust_faulty_stats.csv", corrupt_csv(stats, pick, how))
        assert not verdict["sources"] and verdict["reasons"][0].startswith("locust_faulty_stats.csv: "), how
