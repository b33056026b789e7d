"""A stage's result read as a type (shared/domain/stage_results.py), from what the producers write:
a Cloud Build notification, the chaos verdict's $BUILDER_OUTPUT, a check's probes, the gate's
own records, and documents stored by the code of 2026-11-30 (tests/unit/data/upgrade/)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shared.domain import chaos
from shared.domain.events import event_from_build_notification
from shared.domain.pipeline import StageKind, pipeline_from_stored
from shared.domain.stage_results import (READERS, ApprovalResult, BuildResult, CheckResult, DeployResult, JobResult,
                                         StageResult, result_of)
from shared.domain.state import ReleaseState

DATA = Path(__file__).parent / "data"
RUN_ID = "acme-app-0123456789ab.chaos.a1." + "0123456789abcdef0123"  # release, stage, attempt, run secret


def test_every_stage_kind_has_a_reader():
    assert set(READERS) == {kind.value for kind in StageKind}


def test_a_document_stored_by_the_previous_version_reads_for_every_stage():
    old = json.loads((DATA / "upgrade" / "release_awaiting_approval_unversioned.json").read_text())
    pipeline, state = pipeline_from_stored(old["pipeline"]), ReleaseState.from_dict(old["release"])
    for stage in pipeline.stages:
        result = result_of(stage.kind, state.stages[stage.id].result)
        assert isinstance(result, StageResult) and result.stored == state.stages[stage.id].result
        if isinstance(result, BuildResult):
            assert result.junit is None and result.chaos is None and not result.timed_schema


def test_a_chaos_build_notification_reads_as_its_verdict_and_build():
    verdict = chaos.evaluate({"locust": DATA / "chaos" / "locust_stats_fail.csv"}, max_error_rate=0.01, max_p95_ms=500)
    output = base64.b64encode(chaos.compact(verdict).encode()).decode()
    build = {"id": "b-1", "status": "FAILURE", "tags": [f"run-{RUN_ID}"], "logUrl": "https://console.cloud.google.com/b-1",
             "results": {"buildStepOutputs": ["", output],
                         "images": [{"name": "europe-docker.pkg.dev/p/r/app", "digest": "sha256:" + "a" * 64}]}}
    event = event_from_build_notification("m-1", {"buildId": "b-1", "status": "FAILURE"}, build)
    result = result_of(StageKind.BUILD, event.result)
    assert isinstance(result, BuildResult)
    assert (result.build_id, result.digest, result.log_url) == ("b-1", "sha256:" + "a" * 64, build["logUrl"])
    assert result.chaos is not None and result.chaos.passed is False and result.chaos.reasons == tuple(verdict["reasons"])
    assert result.chaos.error_rate == verdict["error_rate"] and result.chaos.max_p95_ms == 500


def test_a_jobs_junit_counts_and_a_migrations_timings():
    job = result_of("job", {"execution": "projects/p/locations/l/jobs/j/executions/e-1", "tests": 12, "failures": 1,
                            "errors": 0, "skipped": 2, "log_uri": "https://console.cloud.google.com/e-1"})
    assert isinstance(job, JobResult) and job.execution.endswith("e-1") and job.log_url.endswith("e-1")
    assert (job.junit.tests, job.junit.failures, job.junit.skipped) == (12, 1, 2)
    migration = result_of("job", {"dry_run_ms": 12.5})
    assert migration.timed_schema and migration.dry_run_ms == 12.5 and migration.apply_ms == "?"


def test_a_deploys_revisions_and_rollbacks():
    result = result_of("deploy", {
        "revisions": [{"service": "web", "revision": "web-00002", "percent": 10, "serving_before": "web-00001"},
                      "not a target"],
        "rolled_back": [{"service": "web", "revision": "web-00001", "from": "web-00002", "at": 5.0, "by": "the gate",
                         "why": "smoke failed"},
                        {"service": "web", "revision": "web-00001", "manual": True, "request": "r-1"}]})
    assert isinstance(result, DeployResult)
    assert [(t.service, t.revision, t.percent, t.serving_before) for t in result.revisions] == [
        ("web", "web-00002", 10, "web-00001")]
    assert [(r.from_revision, r.manual, r.request) for r in result.rolled_back] == [("web-00002", False, ""),
                                                                                    ("", True, "r-1")]


def test_a_checks_answers_bake_and_analysis():
    result = result_of("check", {
        "url": "http://127.0.0.1:8080", "checks": [{"path": "/", "status": 200, "latency_ms": 12.0, "attempts": 1},
                                                   {"path": "/db", "status": None, "error": "timeout", "attempts": 3}],
        "bake": {"bake_s": 60, "failed": "", "ended_early": {"by": "boss@example.com", "reason": "fine", "at": 9.0}},
        "analysis": {"passes": 2, "latest": {"outcome": "pass", "reason": "ok"}},
        "bake_skip": {"by": "boss@example.com", "at": 8.0, "reason": "fine", "request": "q-1"}})
    assert isinstance(result, CheckResult) and result.url == "http://127.0.0.1:8080"
    assert [(c.path, c.status, c.error) for c in result.checks] == [("/", 200, ""), ("/db", None, "timeout")]
    assert result.bake_ended_early.by == "boss@example.com" and result.bake_skip.request == "q-1"
    assert result.analysis.passes == 2 and result.analysis.latest["outcome"] == "pass"


@pytest.mark.parametrize("raw", [None, {}, {"tests": "12", "checks": "x", "revisions": {"a": 1}, "analysis": [],
                                             "rolled_back": [None], "bake": "x", "bake_skip": "x", "passed": 1}])
def test_missing_or_mistyped_fields_read_as_absent(raw):
    for kind in StageKind:
        result = result_of(kind, raw)
        assert result.rolled_back == () and result.log_url == ""
    assert result_of("build", raw).junit is None
    assert result_of("check", raw).checks is None and result_of("check", raw).analysis is None
    assert result_of("deploy", raw).revisions == ()


def test_an_approvals_decision():
    result = result_of("approval", {"approver": "a@example.com", "decision": "approved", "at": 3.0, "reason": "",
                                    "attempt": 1, "user_agent": "Firefox"})
    assert isinstance(result, ApprovalResult) and result.approver == "a@example.com" and result.at == 3.0
    assert result.stored_decision == {"approver": "a@example.com", "decision": "approved", "at": 3.0, "reason": ""}
