"""The probe hook of the canary analysis, and how its evidence reaches notes and the dashboard."""
from __future__ import annotations

from datetime import timedelta

from shared.app.canary_analysis import TelemetryAnalysis
from shared.domain.analysis import LogLine, Measurements, RevisionTraffic, evidence_lines, summary_line
from shared.domain.probes import ProbeInterval, ProbeVerdict
from shared.testing.fakes import FakeTelemetry

CHECK = {"analysis": {"criteria": {"window": "2m", "min_requests": 10},
                      "target": {"service": "web", "canary_revision": "web-2", "stable_revision": "web-1"}}}
INTERVAL = ProbeInterval("r", "prod-smoke", "r.prod-smoke.a1", "http://x", "bake", 1_800_000_000.0, 1_800_000_060.0)


def measured(canary_errors=0, logs=()):
    return Measurements("2027-01-15T08:00:00Z", "2027-01-15T08:02:00Z", RevisionTraffic("web-2", 100, canary_errors),
                        RevisionTraffic("web-1", 900, 0), tuple(logs), 120)


def test_the_window_ends_with_the_interval_and_spans_the_checklist_window():
    telemetry = FakeTelemetry(measured())
    verdict = TelemetryAnalysis(telemetry)(CHECK, INTERVAL)
    criteria, target, start, end = telemetry.calls[0]
    assert end.timestamp() == INTERVAL.end and end - start == timedelta(seconds=120)
    assert (target.canary_revision, target.stable_revision) == ("web-2", "web-1") and criteria.min_requests == 10
    assert verdict.verdict is ProbeVerdict.PASS and verdict.details["outcome"] == "pass"


def test_a_failing_verdict_carries_numbers_window_and_log_lines():
    line = LogLine("2027-01-15T08:01:00Z", "ERROR", "Traceback (most recent call last):\n  File x\nKeyError: 'tenant'")
    verdict = TelemetryAnalysis(FakeTelemetry(measured(10, [line])))(CHECK, INTERVAL)
    assert verdict.verdict is ProbeVerdict.FAIL
    assert "10.0 % (10 of 100)" in verdict.evidence and "[window 2027-01-15T08:00:00Z to 2027-01-15T08:02:00Z]" in verdict.evidence
    lines = evidence_lines(verdict.details)
    assert "canary web-2: 100 requests, 10 5xx (10.0 %), P95 -" in lines
    assert any("ERROR KeyError: 'tenant' (+2 lines)" in x for x in lines)  # the exception, not "Traceback"
    assert summary_line(verdict.details).startswith("analysis failed: canary 100 req, 10.0 % 5xx")


def test_telemetry_that_cannot_be_read_is_inconclusive_never_a_pass():
    verdict = TelemetryAnalysis(FakeTelemetry(error=RuntimeError("503 Service Unavailable")))(CHECK, INTERVAL)
    assert verdict.verdict is ProbeVerdict.INCONCLUSIVE and "telemetry unavailable" in verdict.evidence


def test_a_check_without_analysis_is_left_to_its_gets():
    assert TelemetryAnalysis(FakeTelemetry())({"analysis": {}}, INTERVAL).verdict is ProbeVerdict.PASS


def test_notes_and_dashboard_show_the_verdict_of_the_staging_review():
    from shared.domain.analysis import Criteria, diagnose
    from shared.ui.dashboard import stage_detail
    from shared.ui.notes import render
    from tests.unit.test_notes import PIPELINE, succeeded_release

    line = LogLine("2027-01-15T08:01:00Z", "ERROR", "sqlite3.OperationalError: ```database is locked")
    staging = Measurements("2027-01-15T08:00:00Z", "2027-01-15T08:02:00Z", RevisionTraffic("web-staging-7", 40, 0),
                           None, (line,), 120)
    verdict = diagnose(Criteria(min_requests=10), staging).to_dict()
    state = succeeded_release()
    state.stages["staging-smoke"].result["analysis"] = {"passes": 1, "fails": 1, "latest": verdict}
    notes = render(state, PIPELINE)
    section = notes.split("## Canary analysis", 1)[1]
    assert "### Smoke staging (succeeded; intervals: 1 passes, 1 fails)" in section
    assert "canary web-staging-7: 40 requests, 0 5xx (0.0 %), P95 -" in section
    assert "ERROR sqlite3.OperationalError: '''database is locked" in section  # cannot close the code block
    assert "window: 2027-01-15T08:00:00Z to 2027-01-15T08:02:00Z (120 s)" in section
    stage = PIPELINE.stage("staging-smoke")
    detail = stage_detail(stage, state.stages["staging-smoke"], state, PIPELINE)
    assert "analysis failed: canary 40 req, 0.0 % 5xx" in detail and "1 error log line(s)" in detail


def test_the_telemetry_clients_are_made_only_when_a_check_needs_them():
    made = []

    def make():
        made.append(1)
        return FakeTelemetry(measured())

    hook = TelemetryAnalysis(make_telemetry=make)
    hook({"analysis": {}}, INTERVAL)
    assert made == []
    hook(CHECK, INTERVAL)
    hook(CHECK, INTERVAL)
    assert made == [1]
