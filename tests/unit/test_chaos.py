"""The chaos verdict on artifact files of each format, passing, failing and unreadable."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.domain import chaos

DATA = Path(__file__).parent / "data" / "chaos"
PASSING = {
    "junit": DATA / "junit_pass.xml",
    "json": DATA / "report_plain_pass.json",
    "k6": DATA / "k6_export_pass.json",
    "locust": DATA / "locust_stats_pass.csv",
}


@pytest.mark.parametrize(
    "kind, name, requests, errors, rate, p95",
    [
        ("junit", "junit_pass.xml", 100, 2, 0.02, None),
        ("junit", "junit_fail.xml", 20, 4, 0.20, None),
        ("junit", "junit_counts_only.xml", 50, 2, 0.04, None),
        ("json", "report_pytest.json", 40, 1, 0.025, None),
        ("json", "report_plain_pass.json", 1000, 10, 0.01, 420.5),
        ("json", "report_plain_fail.json", 1000, 80, 0.08, 950.0),
        ("k6", "k6_export_pass.json", 4800, 24, 0.005, 512.7),
        ("k6", "k6_handle_fail.json", 3000, 63, 0.021, 1250.0),
        ("locust", "locust_stats_pass.csv", 2000, 8, 0.004, 330.0),
        ("locust", "locust_stats_fail.csv", 1000, 90, 0.09, 1400.0),
        ("locust", "locust_stats_legacy.csv", 500, 5, 0.01, 300.0),
    ],
)
def test_each_format_is_read(kind, name, requests, errors, rate, p95):
    m = chaos.read_artifact(kind, DATA / name)
    assert (m.kind, m.requests, m.errors, m.p95_ms) == (kind, requests, errors, p95)
    assert m.error_rate == pytest.approx(rate)


def test_junit_totals_on_testsuites_are_not_counted_twice():
    # junit_pass.xml repeats its totals on <testsuites>; 100 tests, not 200.
    assert chaos.read_artifact("junit", DATA / "junit_pass.xml").requests == 100


def test_all_passing_artifacts_pass():
    verdict = chaos.evaluate(PASSING, 0.05, 800)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["error_rate"] == pytest.approx(0.02)  # the highest rate: JUnit's
    assert verdict["p95_ms"] == 512.7  # the highest P95: k6's
    assert len(verdict["sources"]) == 4


@pytest.mark.parametrize(
    "kind, name, reason",
    [
        ("junit", "junit_fail.xml", "error rate 20.00% >= 5.00% (from "),
        ("json", "report_plain_fail.json", "error rate 8.00% >= 5.00%"),
        ("k6", "k6_handle_fail.json", "P95 1250 ms >= 800 ms (from "),
        ("locust", "locust_stats_fail.csv", "error rate 9.00% >= 5.00%"),
    ],
)
def test_one_failing_artifact_fails_the_gate(kind, name, reason):
    verdict = chaos.evaluate({**PASSING, kind: DATA / name}, 0.05, 800)
    assert not verdict["passed"]
    assert any(r.startswith(reason) for r in verdict["reasons"]), verdict["reasons"]


def test_limits_are_strict_upper_bounds():
    m = chaos.Measurement("json", "x.json", 100, 5, 0.05, 800.0)
    verdict = chaos.judge([m], [], 0.05, 800)
    assert not verdict["passed"]
    assert len(verdict["reasons"]) == 2
    assert chaos.judge([m], [], 0.0501, 800.1)["passed"]


def test_without_any_latency_the_gate_fails():
    verdict = chaos.evaluate({"junit": DATA / "junit_pass.xml"}, 0.05, 800)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["no artifact reports a P95 latency"]


@pytest.mark.parametrize(
    "kind, name, words",
    [
        ("junit", "missing.xml", "junit artifact is missing"),
        ("junit", "junit_broken.xml", "not valid JUnit XML"),
        ("json", "report_broken.json", "not valid JSON"),
        ("json", "report_unknown_shape.json", "neither a pytest-json-report"),
        ("json", "unreadable.bin", "unreadable (UnicodeDecodeError)"),
        ("k6", "k6_missing_metrics.json", "lacks http_req_failed rate"),
        ("k6", "locust_stats_pass.csv", "not valid JSON"),
        ("locust", "locust_stats_no_aggregated.csv", "no 'Aggregated' row"),
        ("locust", ".", "unreadable"),
    ],
)
def test_missing_or_unreadable_artifact_fails_naming_the_file(kind, name, words):
    path = DATA / name
    verdict = chaos.evaluate({**PASSING, kind: path}, 0.05, 800)
    assert not verdict["passed"]
    (reason,) = [r for r in verdict["reasons"] if str(path) in r]
    assert words in reason


def test_nothing_given_fails():
    verdict = chaos.evaluate({}, 0.05, 800)
    assert not verdict["passed"] and verdict["reasons"] == ["no artifact was given"]


def test_cli_prints_writes_builder_output_and_exits_by_verdict(tmp_path, capsys):
    args = [f"--{k}={v}" for k, v in PASSING.items()] + ["--max-error-rate", "0.05", "--max-p95-ms", "800"]
    assert chaos.main(args, env={"BUILDER_OUTPUT": str(tmp_path)}) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["passed"] is True
    assert json.loads((tmp_path / "output").read_text()) == printed

    assert chaos.main(args + ["--max-p95-ms", "500"], env={}) == 1  # the later flag wins
    assert json.loads(capsys.readouterr().out)["reasons"] == [f"P95 513 ms >= 500 ms (from {PASSING['k6']})"]


def test_cli_fails_on_a_missing_file(capsys):
    assert chaos.main(["--junit", "/nonexistent/chaos-junit.xml"], env={}) == 1
    assert "/nonexistent/chaos-junit.xml: junit artifact is missing" in capsys.readouterr().out


def test_output_stays_under_four_kilobytes():
    problems = [f"/workspace/reports/very/long/path/{i}/{'x' * 150}.xml: junit artifact is missing" for i in range(60)]
    text = chaos.compact(chaos.judge([], problems, 0.05, 800))
    assert len(text.encode()) <= 4000
    data = json.loads(text)
    assert data["passed"] is False and data["reasons"]
