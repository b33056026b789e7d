"""The chaos verdict on reports the tools wrote (tests/unit/data/chaos/SOURCES.md says which tool and
run made each file): read, cross-checked, judged; cut, empty, mis-shaped or contradictory reports
fail naming the file and the problem."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.domain import chaos

DATA = Path(__file__).parent / "data" / "chaos"
K6_HEALTHY = DATA / "k6_export_crush_test_1595.json"
LOCUST_HEALTHY = DATA / "locust_healthy_stats.csv"
PASSING = {
    "junit": DATA / "pytest_healthy_junit.xml",
    "json": DATA / "pytest_healthy_report.json",
    "k6": K6_HEALTHY,
    "locust": LOCUST_HEALTHY,
}

# kind, file, requests, errors, P95 (ms), dialect: the numbers of the real runs.
REAL = [
    ("k6", "k6_export_crush_test_1595.json", 1595, 0, 5.036289399999999, "k6 summary export"),
    ("k6", "k6_export_crush_test_1601.json", 1601, 0, 3.182462, "k6 summary export"),
    ("locust", "locust_healthy_stats.csv", 396, 0, 16.0, "Locust stats CSV"),
    ("locust", "locust_faulty_stats.csv", 407, 27, 14.0, "Locust stats CSV"),
    ("locust", "locust_healthy.json", 701, 0, 18.0, "Locust --json"),
    ("locust", "locust_faulty.json", 731, 49, 15.0, "Locust --json"),
    ("junit", "pytest_healthy_junit.xml", 22, 0, None, "JUnit XML"),
    ("junit", "pytest_faulty_junit.xml", 22, 2, None, "JUnit XML"),
    ("junit", "node_healthy_junit.xml", 12, 0, None, "JUnit XML"),
    ("junit", "node_faulty_junit.xml", 12, 1, None, "JUnit XML"),
    ("json", "pytest_healthy_report.json", 22, 0, None, "pytest-json-report"),
    ("json", "pytest_faulty_report.json", 22, 2, None, "pytest-json-report"),
    ("junit", "pytest_rerun_junit.xml", 22, 0, None, "JUnit XML"),
    ("json", "pytest_rerun_report.json", 22, 0, None, "pytest-json-report"),
    ("json", "report_plain_pass.json", 1000, 10, 420.5, "JSON request counts"),
]


@pytest.mark.parametrize("kind, name, requests, errors, p95, dialect", REAL)
def test_each_real_report_is_read(kind, name, requests, errors, p95, dialect):
    m = chaos.read_artifact(kind, DATA / name)
    assert (m.kind, m.requests, m.errors, m.p95_ms, m.dialect) == (kind, requests, errors, p95, dialect)
    assert m.error_rate == pytest.approx(errors / requests)


def test_a_test_re_run_by_pytest_rerunfailures_counts_once_by_its_last_attempt():
    # Two `/` answers failed, and passed on their re-run: 25 <testcase> elements, 23 tests, 1 skipped.
    text = (DATA / "pytest_rerun_junit.xml").read_text()
    assert text.count("<testcase ") == 25 and 'tests="23"' in text
    assert json.loads((DATA / "pytest_rerun_report.json").read_text())["summary"]["rerun"] == 2
    for kind, name in (("junit", "pytest_rerun_junit.xml"), ("json", "pytest_rerun_report.json")):
        m = chaos.read_artifact(kind, DATA / name)
        assert (m.requests, m.errors) == (22, 0)


def test_a_healthy_k6_summary_export_passes():
    # k6 --summary-export writes http_req_failed as {passes, fails, value}: passes are failed requests.
    verdict = chaos.evaluate({"k6": K6_HEALTHY}, 0.05, 800)
    assert verdict["passed"], verdict["reasons"]
    assert (verdict["error_rate"], round(verdict["p95_ms"], 2)) == (0.0, 5.04)
    assert verdict["sources"][0]["requests"] == 1595


def cut_inside_the_95_percent_cell(text: str) -> str:
    """The stats CSV cut one character into the Aggregated row's 95% value (16 ms -> "1")."""
    header, *_ = text.splitlines()
    start = text.rindex("\n,Aggregated,") + 1
    cells = text[start:].split(",")
    at = start + len(",".join(cells[: header.split(",").index("95%")])) + 1
    return text[: at + 1]


def test_a_locust_row_cut_inside_its_95_percent_cell_fails(tmp_path):
    cut = tmp_path / "locust_stats.csv"
    cut.write_text(cut_inside_the_95_percent_cell(LOCUST_HEALTHY.read_text()), newline="")
    assert cut.read_text().endswith(",13,13,14,14,15,1")  # the Aggregated 95% is 16
    whole = chaos.evaluate({"locust": LOCUST_HEALTHY}, 0.05, 10)
    assert not whole["passed"] and whole["reasons"][0].startswith("P95 16 ms >= 10 ms")
    verdict = chaos.evaluate({"locust": cut}, 0.05, 10)  # read as far as it goes, P95 would be "1" ms
    assert not verdict["passed"]
    assert verdict["reasons"] == [f"{cut}: row 4 has 17 of the header's 22 columns (a cut or mis-shaped report)"]


@pytest.mark.parametrize("name", ["k6_repo_summary_export.json", "k6_repo_handle_summary.json", "k6_repo_out.ndjson"])
def test_k6s_own_reports_without_http_requests_fail_by_name(name):
    verdict = chaos.evaluate({**PASSING, "k6": DATA / name}, 0.05, 800)
    assert not verdict["passed"]
    assert verdict["reasons"] == [f"{DATA / name}: no http_req_failed metric (k6 writes it for HTTP requests since v0.31)"]


def handle_summary_of(export: dict) -> dict:
    """The same run in handleSummary's shape, as k6's summary.go builds it: values under .values,
    a rate's fraction named rate."""
    metrics = {}
    for name, values in export["metrics"].items():
        if "passes" in values:
            values = {"rate": values["value"], "passes": values["passes"], "fails": values["fails"]}
        metrics[name] = {"type": "rate" if "rate" in values and "passes" in values else "trend",
                         "contains": "default", "values": values}
    return {"root_group": export["root_group"], "state": {"testRunDurationMs": 3002}, "metrics": metrics}


def test_a_handle_summary_json_is_read_like_the_export(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(handle_summary_of(json.loads(K6_HEALTHY.read_text()))))
    m = chaos.read_artifact("k6", path)
    assert (m.requests, m.errors, m.p95_ms, m.dialect) == (1595, 0, 5.036289399999999, "k6 handleSummary JSON")


def k6_stream(durations: list[float], failed: list[int]) -> str:
    """Lines in the shape k6's internal/output/json writes (see k6_repo_out.ndjson), three per request."""
    lines = ['{"type":"Metric","data":{"name":"http_reqs","type":"counter","contains":"default","thresholds":[],'
             '"submetrics":null},"metric":"http_reqs"}']
    for i, (duration, fail) in enumerate(zip(durations, failed)):
        tags = '{"method":"GET","name":"http://127.0.0.1/","status":"%s"}' % ("500" if fail else "200")
        for metric, value in (("http_reqs", 1), ("http_req_duration", duration), ("http_req_failed", fail)):
            lines.append('{"metric":"%s","type":"Point","data":{"time":"2026-12-07T04:00:%02d.5Z","value":%s,'
                         '"tags":%s}}' % (metric, i % 60, value, tags))
    return "\n".join(lines) + "\n"


def test_a_k6_stream_is_counted_and_its_p95_computed_as_k6_does(tmp_path):
    path = tmp_path / "out.json"
    path.write_text(k6_stream([float(ms) for ms in range(1, 21)], [0] * 18 + [1, 1]))
    m = chaos.read_artifact("k6", path)
    # k6's p(95) of 1..20 interpolates between the 19th and 20th: 19.05
    assert (m.requests, m.errors, m.p95_ms, m.dialect) == (20, 2, pytest.approx(19.05), "k6 JSON stream")


def test_a_k6_stream_cut_inside_a_request_fails(tmp_path):
    text = k6_stream([5.0] * 4, [0] * 4)
    path = tmp_path / "out.json"
    path.write_text(text[: text.rindex('{"metric":"http_req_failed"')])  # cut at a line break
    with pytest.raises(chaos.ArtifactError, match="holds 4 http_reqs, 3 http_req_failed and 4 http_req_duration"):
        chaos.read_artifact("k6", path)
    path.write_text(text[:-20])  # cut inside a line
    with pytest.raises(chaos.ArtifactError, match="line 13 is not a JSON object"):
        chaos.read_artifact("k6", path)


def test_the_locust_failures_file_must_count_the_same_failures(tmp_path):
    for suffix in ("_stats.csv", "_failures.csv"):
        shutil.copy(DATA / f"locust_faulty{suffix}", tmp_path / f"run{suffix}")
    assert chaos.read_artifact("locust", tmp_path / "run_stats.csv").errors == 27
    failures = tmp_path / "run_failures.csv"
    failures.write_text(failures.read_text().replace(",27,", ",26,"), newline="")
    with pytest.raises(chaos.ArtifactError) as caught:
        chaos.read_artifact("locust", tmp_path / "run_stats.csv")
    assert str(caught.value) == f"{tmp_path / 'run_stats.csv'}: its 27 failures contradict the 26 occurrences in {failures}"


def test_reports_that_disagree_are_judged_by_the_worst_and_the_verdict_names_it():
    verdict = chaos.evaluate({"k6": K6_HEALTHY, "locust": [DATA / "locust_faulty_stats.csv", DATA / "locust_faulty.json"],
                              "junit": DATA / "node_healthy_junit.xml"}, 0.05, 800)
    assert not verdict["passed"]
    assert verdict["error_rate"] == round(49 / 731, 6) and verdict["p95_ms"] == 15.0
    assert verdict["decided_by"] == {"error_rate": f"{DATA / 'locust_faulty.json'} (Locust --json)",
                                     "p95_ms": f"{DATA / 'locust_faulty.json'} (Locust --json)"}
    assert verdict["reasons"] == [f"error rate 6.70% >= 5.00% (from {DATA / 'locust_faulty.json'} (Locust --json))"]


def test_all_healthy_reports_pass_and_name_what_decided():
    verdict = chaos.evaluate(PASSING, 0.05, 800)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["p95_ms"] == 16.0  # the highest P95: Locust's
    assert verdict["decided_by"]["p95_ms"] == f"{LOCUST_HEALTHY} (Locust stats CSV)"
    assert len(verdict["sources"]) == 4


@pytest.mark.parametrize("kind, name, reason", [
    ("junit", "pytest_faulty_junit.xml", "error rate 9.09% >= 5.00% (from "),
    ("junit", "node_faulty_junit.xml", "error rate 8.33% >= 5.00% (from "),
    ("json", "pytest_faulty_report.json", "error rate 9.09% >= 5.00% (from "),
    ("json", "report_plain_fail.json", "P95 950 ms >= 800 ms (from "),
    ("locust", "locust_faulty_stats.csv", "error rate 6.63% >= 5.00% (from "),
])
def test_one_failing_report_fails_the_gate(kind, name, reason):
    verdict = chaos.evaluate({**PASSING, kind: DATA / name}, 0.05, 800)
    assert not verdict["passed"]
    assert any(r.startswith(reason) for r in verdict["reasons"]), verdict["reasons"]


def edited(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """The report with its first ``old`` after the anchor (``ANCHOR|old``, if given) replaced."""
    text = (DATA / name).read_text()
    anchor, _, old = old.rpartition("|")
    start = text.index(old, text.index(anchor) if anchor else 0)
    path = tmp_path / name
    path.write_text(text[:start] + new + text[start + len(old):], newline="")
    return path


@pytest.mark.parametrize("name, old, new, words", [
    ("k6_export_crush_test_1595.json", '"passes": 0', '"passes": 3', "http_req_failed.value 0 contradicts 3 of 1598"),
    ("k6_export_crush_test_1595.json", '"http_reqs": |"count": 1595', '"count": 1590', "http_reqs.count 1590 contradicts"),
    ("k6_export_crush_test_1595.json", '"http_req_duration": |"p(95)": 5.036289399999999', '"p(95)": 2.0',
     "http_req_duration p(95) 2 is below p(90) 3.61261"),
    ("k6_export_crush_test_1595.json", '"http_req_duration": |"p(95)": 5.036289399999999', '"p(95)": NaN', "not a finite non-negative"),
    ("locust_faulty_stats.csv", "\n,Aggregated,407,27", "\n,Aggregated,407,28", "do not add up to the Aggregated"),
    ("locust_faulty_stats.csv", "\n,Aggregated,407,27,13,", "\n,Aggregated,407,27,15,", "95% 14 is below median 15"),
    ("locust_faulty_stats.csv", "\n,Aggregated,407,27,13,", "\n,Aggregated,407,27,", "row 4 has 21 of the header's 22"),
    ("locust_faulty.json", '"num_failures": 49', '"num_failures": -49', "not a finite non-negative"),
    ("pytest_faulty_junit.xml", 'failures="2"', 'failures="1"', "declares 1 failures but holds 2"),
    ("pytest_faulty_junit.xml", 'tests="23"', 'tests="2x"', "tests is not a number"),
    ("node_faulty_junit.xml", 'tests="11"', 'tests="9"', "declares 9 tests but holds"),
    ("pytest_faulty_report.json", '"failed": 2', '"failed": 1', "add up to 22, not summary.total 23"),
    ("pytest_faulty_report.json", '"exitcode": 1', '"exitcode": 2', "exit code 2 (interrupted)"),
])
def test_a_contradictory_report_fails_naming_file_and_problem(tmp_path, name, old, new, words):
    kind = next(k for k, n, *_ in REAL if n == name)
    path = edited(tmp_path, name, old, new)
    verdict = chaos.evaluate({**PASSING, kind: path}, 0.05, 800)
    assert not verdict["passed"]
    (reason,) = [r for r in verdict["reasons"] if r.startswith(f"{path}: ")]
    assert words in reason


@pytest.mark.parametrize("kind", ["junit", "json", "k6", "locust"])
def test_an_empty_report_fails(tmp_path, kind):
    path = tmp_path / "empty"
    path.write_text("\n")
    verdict = chaos.evaluate({kind: path}, 0.05, 800)
    assert not verdict["passed"] and verdict["reasons"][0].startswith(f"{path}: ") and "empty" in verdict["reasons"][0]


@pytest.mark.parametrize("kind, name, words", [
    ("junit", "missing.xml", "junit artifact is missing"),
    ("junit", "junit_broken.xml", "not valid JUnit XML"),
    ("json", "report_broken.json", "not valid JSON"),
    ("json", "report_unknown_shape.json", "neither a pytest-json-report"),
    ("json", "unreadable.bin", "unreadable (UnicodeDecodeError)"),
    ("k6", "k6_missing_metrics.json", "no http_req_failed metric"),
    ("k6", "locust_healthy_stats.csv", "not valid JSON"),
    ("locust", "pytest_healthy_report.json", "no 'Name' column"),
    ("locust", ".", "unreadable"),
])
def test_missing_or_unreadable_report_fails_naming_the_file(kind, name, words):
    path = DATA / name
    verdict = chaos.evaluate({**PASSING, kind: path}, 0.05, 800)
    assert not verdict["passed"]
    (reason,) = [r for r in verdict["reasons"] if str(path) in r and "(from" not in r]
    assert words in reason


def test_limits_are_strict_upper_bounds():
    m = chaos.Measurement("json", "x.json", 100, 5, 0.05, 800.0)
    verdict = chaos.judge([m], [], 0.05, 800)
    assert not verdict["passed"]
    assert len(verdict["reasons"]) == 2
    assert chaos.judge([m], [], 0.0501, 800.1)["passed"]


def test_without_any_latency_the_gate_fails():
    verdict = chaos.evaluate({"junit": DATA / "pytest_healthy_junit.xml"}, 0.05, 800)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["no artifact reports a P95 latency"]


def test_nothing_given_fails():
    verdict = chaos.evaluate({}, 0.05, 800)
    assert not verdict["passed"] and verdict["reasons"] == ["no artifact was given"]


def test_cli_prints_writes_builder_output_and_exits_by_verdict(tmp_path, capsys):
    args = [f"--{k}={v}" for k, v in PASSING.items()] + ["--max-error-rate", "0.05", "--max-p95-ms", "800"]
    assert chaos.main(args, env={"BUILDER_OUTPUT": str(tmp_path)}) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["passed"] is True
    assert json.loads((tmp_path / "output").read_text()) == printed

    assert chaos.main(args + ["--max-p95-ms", "10"], env={}) == 1  # the later flag wins
    assert json.loads(capsys.readouterr().out)["reasons"] == [f"P95 16 ms >= 10 ms (from {LOCUST_HEALTHY} (Locust stats CSV))"]


def test_cli_takes_a_flag_more_than_once(capsys):
    assert chaos.main(["--locust", str(LOCUST_HEALTHY), "--locust", str(DATA / "locust_faulty.json")], env={}) == 1
    assert len(json.loads(capsys.readouterr().out)["sources"]) == 2


def test_cli_fails_on_a_missing_file(capsys):
    assert chaos.main(["--junit", "/nonexistent/chaos-junit.xml"], env={}) == 1
    assert "/nonexistent/chaos-junit.xml: junit artifact is missing" in capsys.readouterr().out


def test_output_stays_under_four_kilobytes():
    problems = [f"/workspace/reports/very/long/path/{i}/{'x' * 150}.xml: junit artifact is missing" for i in range(60)]
    text = chaos.compact(chaos.judge([], problems, 0.05, 800))
    assert len(text.encode()) <= 4000
    data = json.loads(text)
    assert data["passed"] is False and data["reasons"]


def test_a_shape_no_parser_foresaw_fails_closed(monkeypatch):
    # The exitcode of a pytest-json-report given as an object once crashed the step (found by the
    # property test); whatever a parser did not foresee fails that report instead.
    monkeypatch.setitem(chaos.PARSERS, "json", lambda text, file: {}["summary"])
    verdict = chaos.evaluate({**PASSING}, 0.05, 800)
    assert not verdict["passed"]
    assert f"{PASSING['json']}: the json report has a shape this gate does not read (KeyError)" in verdict["reasons"]


def test_an_exitcode_that_is_not_a_number_is_no_crash(tmp_path):
    path = edited(tmp_path, "pytest_rerun_report.json", '"exitcode": 0', '"exitcode": {"code": 0}')
    assert chaos.read_artifact("json", path).requests == 22  # the exit code is only read to refuse 2, 3 and 4
