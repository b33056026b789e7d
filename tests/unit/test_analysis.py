"""Canary analysis: diagnose() as a table, the statistics against worked examples,
and the QA checklist's validation in the pipeline file."""
from __future__ import annotations

import bisect
import copy
import math

import pytest

from shared.domain import stats
from shared.domain.probes import ProbeVerdict
from shared.domain.analysis import (Criteria, Distribution, LogLine, Measurements, RevisionTraffic,
                                    diagnose)
from shared.domain.errors import DefinitionError
from shared.domain.pipeline import parse_pipeline

BOUNDS = tuple(1.2 ** i for i in range(60))  # exponential buckets from 1 ms, growth factor 1.2


def dist(latencies_ms):
    counts = [0] * (len(BOUNDS) + 1)
    for value in latencies_ms:
        counts[bisect.bisect_right(BOUNDS, value)] += 1
    return Distribution(BOUNDS, tuple(counts))


def rev(name, requests, errors=0, latency_ms=20.0, raw=True):
    # A spread of latencies around latency_ms, the same shape for every revision.
    samples = [latency_ms * (0.5 + (i % 20) / 19) for i in range(requests)]
    return RevisionTraffic(name, requests, errors, dist(samples), tuple(samples) if raw else ())


def measure(canary, stable=None, logs=()):
    return Measurements("2026-11-30T20:00:00Z", "2026-11-30T20:05:00Z", canary, stable, tuple(logs), 300)


TRACEBACK = LogLine("2026-11-30T20:01:02Z", "ERROR", "Traceback (most recent call last):\n  File x")
INFO = LogLine("2026-11-30T20:01:00Z", "INFO", "GET / 200")
OPERATIONAL = LogLine("2026-11-30T20:01:03Z", "WARNING", "sqlalchemy OperationalError: could not connect")
C = Criteria(min_requests=50, max_5xx_ratio=0.01, p95_limit_ms=1000, max_latency_ratio=1.5)


@pytest.mark.parametrize("name, measurements, outcome, failing", [
    ("clean canary", measure(rev("c", 100), rev("s", 900)), ProbeVerdict.PASS, set()),
    ("5 % 5xx", measure(rev("c", 100, 5), rev("s", 900)), ProbeVerdict.FAIL, {"error_ratio"}),
    ("3x slower", measure(rev("c", 100, latency_ms=60), rev("s", 900)), ProbeVerdict.FAIL, {"latency"}),
    ("3x slower, buckets only", measure(rev("c", 100, latency_ms=60, raw=False), rev("s", 900, raw=False)),
     ProbeVerdict.FAIL, {"latency"}),
    ("error logs", measure(rev("c", 100), rev("s", 900), [INFO, TRACEBACK]), ProbeVerdict.FAIL, {"logs"}),
    ("pattern below the severity", measure(rev("c", 100), rev("s", 900), [OPERATIONAL]), ProbeVerdict.FAIL, {"logs"}),
    ("info logs only", measure(rev("c", 100), rev("s", 900), [INFO]), ProbeVerdict.PASS, set()),
    ("bad stable, good canary", measure(rev("c", 100), rev("s", 900, 90, latency_ms=200)), ProbeVerdict.PASS, set()),
    ("1 error in 100, stable clean: chance", measure(rev("c", 100, 1), rev("s", 900)), ProbeVerdict.PASS, set()),
    ("1 error in 21, stable clean: still chance", measure(rev("c", 21, 1), rev("s", 223)), ProbeVerdict.INCONCLUSIVE,
     set()),
    ("both as bad: canary no worse", measure(rev("c", 100, 3), rev("s", 900, 27)), ProbeVerdict.PASS, set()),
    ("too little traffic", measure(rev("c", 12), rev("s", 900)), ProbeVerdict.INCONCLUSIVE, set()),
    ("too little stable traffic", measure(rev("c", 60), rev("s", 10)), ProbeVerdict.INCONCLUSIVE, set()),
    ("no traffic at all", measure(rev("c", 0), rev("s", 0)), ProbeVerdict.INCONCLUSIVE, set()),
    ("few requests but all failing: failed beats inconclusive",
     measure(rev("c", 10, 10), rev("s", 900)), ProbeVerdict.FAIL, {"error_ratio"}),
    ("few requests with a traceback", measure(rev("c", 5), rev("s", 900), [TRACEBACK]), ProbeVerdict.FAIL, {"logs"}),
    ("staging: absolute limits, clean", measure(rev("c", 60)), ProbeVerdict.PASS, set()),
    ("staging: 10 % 5xx", measure(rev("c", 100, 10)), ProbeVerdict.FAIL, {"error_ratio"}),
    ("staging: 1 of 60 is within the limit's noise", measure(rev("c", 60, 1)), ProbeVerdict.PASS, set()),
    ("staging: over the P95 limit", measure(rev("c", 60, latency_ms=900)), ProbeVerdict.FAIL, {"latency"}),
    ("slower P95 but within the ratio", measure(rev("c", 100, latency_ms=26), rev("s", 900)), ProbeVerdict.PASS, set()),
])
def test_diagnose(name, measurements, outcome, failing):
    verdict = diagnose(C, measurements)
    assert verdict.outcome is outcome, verdict.reason
    assert {f.check for f in verdict.findings if f.outcome is ProbeVerdict.FAIL} == failing
    assert verdict.reason


def test_a_failing_verdict_explains_itself_in_numbers():
    verdict = diagnose(C, measure(rev("sample-web-00002", 100, 5), rev("sample-web-00001", 900), [TRACEBACK]))
    assert "5.0 % (5 of 100)" in verdict.reason and "0.0 % (0 of 900)" in verdict.reason
    assert "Traceback" in verdict.reason
    evidence = verdict.to_dict()["evidence"]
    assert evidence["canary"]["errors_5xx"] == 5 and evidence["stable"]["requests"] == 900
    assert evidence["window"] == {"start": "2026-11-30T20:00:00Z", "end": "2026-11-30T20:05:00Z", "seconds": 300}
    assert evidence["log_lines"][0]["text"].startswith("Traceback")


def test_inconclusive_names_the_revision_and_the_minimum():
    verdict = diagnose(C, measure(rev("sample-web-00002", 12), rev("sample-web-00001", 900)))
    assert "sample-web-00002 had 12" in verdict.reason and "50" in verdict.reason


def test_a_slower_p95_that_the_rank_test_calls_chance_passes():
    # The same typical request; a few slow outliers lift the canary's P95 but not its ranks.
    stable = [20.0] * 93 + [21.0] * 7
    canary = [20.0] * 92 + [200.0] * 8
    m = measure(RevisionTraffic("c", 100, 0, dist(canary), tuple(canary)),
                RevisionTraffic("s", 100, 0, dist(stable), tuple(stable)))
    verdict = diagnose(C, m)
    assert verdict.outcome is ProbeVerdict.PASS and "not beyond chance" in verdict.reason


def test_error_log_rate_is_per_minute_of_the_window():
    lenient = Criteria(max_error_logs_per_min=1.0)
    four = [TRACEBACK] * 4  # 4 in 5 minutes: 0.8/min
    assert diagnose(lenient, measure(rev("c", 100), rev("s", 900), four)).outcome is ProbeVerdict.PASS
    assert diagnose(lenient, measure(rev("c", 100), rev("s", 900), four * 2)).outcome is ProbeVerdict.FAIL


# --- statistics against worked examples ---------------------------------------------------

def test_wilson_interval_worked_examples():
    assert stats.wilson_interval(0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson_interval(5, 100, 0.95) == pytest.approx((0.0215, 0.1118), abs=1e-4)
    assert stats.wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_fisher_exact_worked_examples():
    # One event among 244 lands in the canary's 21 with probability 21/244, whatever a z-test says.
    assert stats.fisher_greater(1, 21, 0, 223) == pytest.approx(21 / 244)
    # 5 of 100 against 0 of 300: all five events in the canary's hundred, C(100,5)/C(400,5).
    assert stats.fisher_greater(5, 100, 0, 300) == pytest.approx(math.comb(100, 5) / math.comb(400, 5))
    assert stats.fisher_greater(0, 100, 5, 900) == pytest.approx(1.0)
    assert stats.fisher_greater(3, 100, 27, 900) > 0.3  # the same 3 % on both sides
    assert stats.fisher_greater(0, 0, 0, 900) == 1.0


def test_mann_whitney_worked_examples():
    # Fully separated samples of 3: U = 9, asymptotic one-sided p = 0.0404 (SciPy's value).
    result = stats.mann_whitney_greater([4, 5, 6], [1, 2, 3])
    assert result.u == 9 and result.p_greater == pytest.approx(0.0404, abs=1e-4)
    # Ties take the average rank: ranks of the first sample 1 + 3 + 3 = 7, U = 7 - 6 = 1.
    assert stats.mann_whitney_greater([1, 2, 2], [2, 3, 3]).u == 1
    assert stats.mann_whitney_greater([5] * 10, [5] * 10).p_greater == 0.5
    assert stats.mann_whitney_greater([], [1]).p_greater == 1.0


def test_percentile_from_buckets():
    bounds, counts = (10.0, 20.0, 40.0), (0, 50, 40, 10)
    assert stats.percentile_from_buckets(bounds, counts, 0.5) == (20.0, True)
    assert stats.percentile_from_buckets(bounds, counts, 0.6) == (25.0, True)
    assert stats.percentile_from_buckets(bounds, counts, 0.95) == (40.0, False)  # overflow: "at least"
    assert stats.percentile_from_buckets(bounds, (3,), 0.95) == pytest.approx((9.5, True))  # underflow from 0
    assert stats.percentile_from_buckets(bounds, (), 0.95) is None


# --- the QA checklist in the pipeline file -------------------------------------------------

def doc_with(analysis, **params):
    check = {"target": "canary", "service": "web", "revision_tag": "canary", "paths": ["/"], "bake": "5m",
             "analysis": analysis}
    check.update(params)
    deploy = {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "5m",
              "params": {"services": ["web"], "traffic_percent": 10, "revision_tag": "canary"}}
    approval = {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h",
                "params": {"approvers": ["boss@example.com"]}}
    return {"name": "t", "stages": [approval, deploy, {"id": "smoke", "kind": "check", "environment": "prod", "timeout": "15m",
                                             "params": check}]}


def test_criteria_from_the_pipeline_file():
    pipeline = parse_pipeline(doc_with({"window": "2m", "interval": "30s", "max_extension": "4m", "min_requests": 20,
                                        "max_5xx_ratio": 0.02, "p95_limit_ms": 800, "log_severity": "CRITICAL",
                                        "log_patterns": ["Traceback", "Operational(Error)?"]}))
    criteria = Criteria.from_params(pipeline.stage("smoke").params["analysis"])
    assert (criteria.window_s, criteria.interval_s, criteria.max_extension_s) == (120, 30, 240)
    assert criteria.min_requests == 20 and criteria.max_5xx_ratio == 0.02 and criteria.p95_limit_ms == 800
    assert criteria.log_patterns == ("Traceback", "Operational(Error)?") and criteria.log_severity == "CRITICAL"
    assert Criteria.from_params({}) == Criteria()


@pytest.mark.parametrize("analysis, params, message", [
    ({"max_5xx_ratio": 5}, {}, "params.analysis.max_5xx_ratio: must be a number from 0 to 1, got 5"),
    ({"log_severity": "FATAL"}, {}, "params.analysis.log_severity: 'FATAL' is not a Cloud Logging severity"),
    ({"log_patterns": ["Trace(back"]}, {}, "params.analysis.log_patterns: item 0: 'Trace(back' is not a valid regular"),
    ({"min_request": 5}, {}, "params.analysis.min_request: unknown field (did you mean 'min_requests'?)"),
    ({"window": "1m", "interval": "2m"}, {}, "params.analysis.interval: 120s is longer than the window of 60s"),
    ({"window": "soon"}, {}, "params.analysis.window: 'soon' is not a positive duration"),
    ({}, {"service": None}, "params.analysis: needs params.service"),
    ({}, {"bake": None}, "params.analysis: needs params.bake"),
    ({"max_extension": "10m"}, {}, "params.analysis.max_extension: window + bake + max_extension is 960s, longer than"
                                   " the stage's timeout of 900s"),
    ("strict", {}, "params.analysis: must be a mapping"),
])
def test_the_checklist_is_validated_with_pointed_errors(analysis, params, message):
    doc = doc_with(copy.deepcopy(analysis), **params)
    for key in [k for k, v in params.items() if v is None]:
        del doc["stages"][2]["params"][key]
    with pytest.raises(DefinitionError) as raised:
        parse_pipeline(doc)
    assert f"stage 'smoke': {message}" in str(raised.value)


def test_a_traceback_in_the_evidence_shows_its_exception_line():
    """Issue 26: the evidence said "Traceback (most recent call last): (+2 lines)"."""
    from shared.domain.analysis import evidence_lines

    # As Cloud Logging holds an uncaught Python exception of a Cloud Run service (one entry).
    text = ('Traceback (most recent call last):\n  File "/app/main.py", line 12, in health\n'
            '    return 1 / 0\nZeroDivisionError: division by zero\n')
    verdict = {"outcome": "fail", "reason": "error logs", "evidence": {
        "error_logs": 1, "log_lines": [{"timestamp": "2027-01-15T08:00:00Z", "severity": "ERROR", "text": text}]}}
    (line,) = [x for x in evidence_lines(verdict) if x.startswith("  2027")]
    assert line == "  2027-01-15T08:00:00Z ERROR ZeroDivisionError: division by zero (+3 lines)"
    one = {"outcome": "fail", "reason": "r", "evidence": {"error_logs": 1, "log_lines": [
        {"timestamp": "t", "severity": "ERROR", "text": "db connection refused"}]}}
    assert "  t ERROR db connection refused" in evidence_lines(one)
