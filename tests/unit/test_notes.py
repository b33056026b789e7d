"""Release notes rendered from release states built here, stage by stage, with known times."""
from __future__ import annotations

import re

from shared.ui.notes import duration_text, iso, render, traffic_decisions
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import Attempt, ReleaseStatus, StageStatus, new_release

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
PUSHER = "dev@example.com"
APPROVER = "boss@example.com"

DOC = {
    "name": "mini",
    "stages": [
        {"id": "unit", "number": "2", "name": "Unit tests", "kind": "build", "timeout": "10m",
         "params": {"steps": [{"name": "local"}]}},
        {"id": "e2e", "number": "5", "name": "E2E", "kind": "build", "timeout": "10m",
         "params": {"steps": [{"name": "local"}]}},
        {"id": "vector-schema", "number": "6", "name": "Vector schema migrations", "kind": "build", "timeout": "10m",
         "params": {"steps": [{"name": "local"}]}},
        {"id": "staging-deploy", "number": "8", "name": "Staging deploy", "kind": "deploy", "environment": "staging",
         "timeout": "5m", "params": {"services": ["web-staging"], "traffic_percent": 100}},
        {"id": "staging-smoke", "number": "10", "name": "Smoke staging", "kind": "check", "environment": "staging",
         "timeout": "5m", "params": {"target": "staging", "paths": ["/", "/health/liveliness"]}},
        {"id": "chaos", "number": "10a", "name": "Chaos smoke", "kind": "build", "optional": True,
         "environment": "staging", "timeout": "30m", "params": {"steps": [{"name": "local"}]}},
        {"id": "approval", "number": "11", "name": "Approval", "kind": "approval", "environment": "prod",
         "timeout": "24h", "params": {"approvers": [APPROVER]}},
        {"id": "prod-deploy", "number": "13", "name": "Prod deploy (10 % traffic)", "kind": "deploy",
         "environment": "prod", "timeout": "5m", "params": {"services": ["web"], "traffic_percent": 10}},
        {"id": "traffic-100", "number": "15", "name": "Traffic 100 %", "kind": "traffic", "environment": "prod",
         "timeout": "5m", "params": {"services": ["web"], "percent": 100}},
    ],
}
PIPELINE = parse_pipeline(DOC)


def finish(state, stage_id, started, took, status=StageStatus.SUCCEEDED, attempt=1, **result):
    st = state.stages[stage_id]
    st.status, st.attempt = status, attempt
    st.stage_run_id = f"{state.release_id}.{stage_id}.a{attempt}"
    st.started_at, st.finished_at = T0 + started, T0 + started + took
    st.result = dict(result)
    return st


def succeeded_release(chaos=True):
    """A release that went all the way, with every result the executors write."""
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890abcdef",
                        version="1.2.3", pushed_by=PUSHER, now=T0)
    finish(state, "unit", 0, 42.5, tests=120, failures=0, errors=0, skipped=3, junit="reports/unit.xml",
           build_id="b-unit", log_url="https://console.cloud.google.com/cloud-build/builds/b-unit")
    finish(state, "e2e", 60, 95, tests=14, failures=0, errors=0, skipped=1)
    finish(state, "vector-schema", 200, 4, dry_run_ms=12.34, apply_ms=56.7)
    finish(state, "staging-smoke", 210, 1.5, url="https://web-staging.run.app", target="staging", checks=[
        {"path": "/", "status": 200, "attempts": 1, "latency_ms": 31.2},
        {"path": "/health/liveliness", "status": 200, "attempts": 2, "latency_ms": 8.0},
    ])
    if chaos:
        state.chaos_requested_by = "qa@example.com"
        finish(state, "chaos", 220, 300, passed=True, error_rate=0.0125, p95_ms=412.0, max_error_rate=0.05,
               max_p95_ms=800, reasons=[])
    else:
        state.stages["chaos"].status = StageStatus.SKIPPED
    approval = finish(state, "approval", 600, 3000, approver=APPROVER, decision="approved", at=T0 + 3600,
                      reason="looks good", attempt=1)
    state.approval = {"approver": APPROVER, "decision": "approved", "at": T0 + 3600, "reason": "looks good",
                      "nonce": "n-secret", "attempt": 1}
    assert approval.finished_at == T0 + 3600
    finish(state, "prod-deploy", 3700, 20, revisions=[
        {"service": "web", "revision": "web-0a1b2c3d4e", "percent": 10, "tag": "canary"}])
    finish(state, "traffic-100", 4000, 5, revisions=[{"service": "web", "revision": "web-0a1b2c3d4e", "percent": 100}])
    state.status = ReleaseStatus.SUCCEEDED
    state.updated_at = T0 + 4005
    return state


def test_header_names_version_tag_commit_repo_and_pusher():
    notes = render(succeeded_release(), PIPELINE)
    assert notes.startswith("# Release 1.2.3 of acme/app\n")
    for expected in ("| Version | 1.2.3 |", "| Tag | `v1.2.3-abcdef1` |", "| Commit | `abcdef1234567890abcdef` |",
                     "| Repository | acme/app |", "| Pushed by | dev@example.com |", "| Status | succeeded |",
                     "| Created | 2027-01-15T08:00:00Z |"):
        assert expected in notes


def test_each_stage_has_result_attempts_started_and_duration():
    notes = render(succeeded_release(), PIPELINE)
    assert "| 2 | Unit tests | succeeded | 1 | 2027-01-15T08:00:00Z | 42.5s | log: https://console.cloud.google.com/cloud-build/builds/b-unit |" in notes
    assert "| 11 | Approval | succeeded | 1 | 2027-01-15T08:10:00Z | 50m00s |" in notes
    stage_rows = [line for line in notes.splitlines() if re.match(r"^\| \d+a? \| ", line)]
    assert [row.split(" | ")[0][2:] for row in stage_rows] == ["2", "5", "6", "8", "10", "10a", "11", "13", "15"]


def test_test_counts_come_from_the_junit_summaries():
    notes = render(succeeded_release(), PIPELINE)
    assert "| Unit tests | 120 | 0 | 0 | 3 |" in notes
    assert "| E2E | 14 | 0 | 0 | 1 |" in notes


def test_vector_schema_run_time_is_recorded():
    notes = render(succeeded_release(), PIPELINE)
    assert "- Vector schema migrations: dry run 12.34 ms, apply 56.7 ms (total 69.0 ms; recorded, not judged)" in notes


def test_smoke_checks_list_status_codes_and_latencies():
    notes = render(succeeded_release(), PIPELINE)
    assert "### Smoke staging (succeeded) against https://web-staging.run.app" in notes
    assert "| / | 200 | 31.2 ms | 1 |" in notes
    assert "| /health/liveliness | 200 | 8.0 ms | 2 |" in notes


def test_a_check_without_answer_says_why():
    state = succeeded_release()
    state.stages["staging-smoke"].result["checks"][1] = {"path": "/health/liveliness", "status": None,
                                                        "attempts": 4, "latency_ms": None, "error": "ConnectTimeout"}
    assert "| /health/liveliness | no answer (ConnectTimeout) |  | 4 |" in render(state, PIPELINE)


def test_chaos_verdict_with_error_rate_p95_and_limits():
    notes = render(succeeded_release(), PIPELINE)
    assert "- Chaos smoke requested by qa@example.com: succeeded" in notes
    assert "- error rate 1.25%, P95 412 ms, passed: yes (limits: < 5.00%, < 800 ms)" in notes


def test_chaos_notes_name_the_report_that_decided():
    state = succeeded_release()
    # Firestore hands a map back in any order; the notes name error rate, then P95.
    state.stages["chaos"].result["decided_by"] = {"p95_ms": "reports/locust_stats.csv (Locust stats CSV)",
                                                  "error_rate": "reports/locust.json (Locust --json)"}
    notes = render(state, PIPELINE)
    assert ("- error rate from reports/locust.json (Locust --json)\n"
            "- P95 from reports/locust_stats.csv (Locust stats CSV)") in notes


def test_chaos_not_requested_is_said_so():
    notes = render(succeeded_release(chaos=False), PIPELINE)
    assert "- Chaos smoke: not requested (skipped)" in notes
    assert "error rate" not in notes


def test_approval_names_approver_time_and_reason():
    notes = render(succeeded_release(), PIPELINE)
    assert "- approved by boss@example.com at 2027-01-15T09:00:00Z — reason: looks good" in notes
    assert "n-secret" not in notes, "the link nonce is not for the notes"


def test_traffic_decisions_with_their_times():
    state = succeeded_release()
    notes = render(state, PIPELINE)
    assert "- 10 % at 2027-01-15T09:02:00Z by stage `prod-deploy` (web -> web-0a1b2c3d4e)" in notes
    assert "- 100 % at 2027-01-15T09:06:45Z by stage `traffic-100` (web -> web-0a1b2c3d4e)" in notes
    assert [(d["percent"], d["at"]) for d in traffic_decisions(state, PIPELINE)] == [(10, T0 + 3720), (100, T0 + 4005)]


def test_stopped_release_names_stage_and_reason_and_earlier_attempts():
    state = succeeded_release()
    st = finish(state, "e2e", 60, 95, status=StageStatus.FAILED, attempt=2, tests=14, failures=2, errors=0, skipped=0)
    st.reason = "build b-e2e ended FAILURE"
    st.history = [Attempt(1, "x.e2e.a1", "failed", T0, T0 + 10, "flaky network", {})]
    for later in ("vector-schema", "staging-smoke", "chaos", "approval", "prod-deploy", "traffic-100"):
        state.stages[later].status = StageStatus.PENDING
        state.stages[later].result = {}
    state.approval = {}
    state.status, state.stopped_at_stage = ReleaseStatus.STOPPED, "e2e"
    state.reason = "stage 5 'e2e' failed: build b-e2e ended FAILURE"
    notes = render(state, PIPELINE)
    assert "## Stopped\n\nStopped at stage `e2e`: stage 5 'e2e' failed: build b-e2e ended FAILURE" in notes
    assert "| 5 | E2E | failed | 2 |" in notes
    assert "earlier: attempt 1 failed: flaky network" in notes
    assert "| E2E | 14 | 2 | 0 | 0 |" in notes
    assert "- no decision yet (pending)" in notes
    assert "## Traffic" not in notes


def test_rejection_is_reported_from_the_approval_stage():
    state = succeeded_release()
    state.approval = {}
    st = state.stages["approval"]
    st.status, st.reason = StageStatus.FAILED, "rejected by boss@example.com: not today"
    st.result = {"approver": APPROVER, "decision": "rejected", "at": T0 + 3600, "reason": "not today"}
    assert "- rejected by boss@example.com at 2027-01-15T09:00:00Z — reason: not today" in render(state, PIPELINE)


def test_markdown_table_cells_cannot_be_broken_by_stored_text():
    state = succeeded_release()
    state.stages["e2e"].reason = "a|b\nc"
    notes = render(state, PIPELINE)
    row = next(line for line in notes.splitlines() if line.startswith("| 5 | E2E |"))
    assert "a\\|b c" in row and row.count(" | ") == 6


def test_rendering_is_deterministic():
    assert render(succeeded_release(), PIPELINE) == render(succeeded_release(), PIPELINE)


def test_time_and_duration_formats():
    assert iso(T0) == "2027-01-15T08:00:00Z" and iso(None) == ""
    assert [duration_text(s) for s in (None, 0.04, 59.9, 61, 3600 * 2 + 65)] == ["", "0.0s", "59.9s", "1m01s", "2h01m"]


def test_superseded_release_says_by_whom_not_stopped():
    state = succeeded_release()
    state.status = ReleaseStatus.SUPERSEDED
    state.superseded_by = "acme-app-999"
    state.reason = "superseded by release acme-app-999 while queued for prod"
    notes = render(state, PIPELINE)
    assert "## Superseded\n\nSuperseded by release acme-app-999 while queued for prod" in notes
    assert "## Stopped" not in notes


def test_a_traffic_share_taken_back_by_a_rollback_says_what_serves_now():
    """Issue 26: prod-deploy still said "10 % traffic since …" after the canary was rolled back."""
    from shared.domain.state import StageState
    from shared.ui.notes import traffic_now_text

    stage = parse_pipeline({"name": "p", "stages": [
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h",
         "params": {"approvers": [APPROVER]}},
        {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "5m",
         "params": {"services": ["web"], "traffic_percent": 10}}]}).stage("prod-deploy")
    st = StageState(status=StageStatus.SUCCEEDED, attempt=1, started_at=T0, finished_at=T0 + 5,
                    result={"revisions": [{"service": "web", "revision": "web-2", "percent": 10}]})
    assert traffic_now_text(stage, st) == "10 % traffic since 2027-01-15T08:00:05Z"
    st.result["rolled_back"] = [{"service": "web", "from": "web-2", "revision": "web-1", "at": T0 + 65,
                                 "by": "", "why": "prod-smoke failed"}]
    assert traffic_now_text(stage, st) == ("10 % from 2027-01-15T08:00:05Z until rolled back at "
                                           "2027-01-15T08:01:05Z; web serves web-1 now")


def test_the_notes_open_with_a_change_log_then_the_stage_detail():
    """Issue 26: the notes were 100 lines of stage tables with no commit list."""
    state = succeeded_release()
    state.changes = {"commits": [{"id": "abcdef1234", "message": "Fix the login", "author": "Dana"},
                                 {"id": "1234567abc", "message": "Faster search", "author": "Lee"}],
                     "total": 3, "source": "github compare",
                     "compare_url": "https://github.com/acme/app/compare/0123456...abcdef1"}
    notes = render(state, PIPELINE)
    head = notes[:notes.index("## Release\n")]
    assert head.splitlines()[2] == ("**1.2.3** (`v1.2.3-abcdef1`) of acme/app: succeeded, approved by "
                                    f"{APPROVER} at {iso(state.approval['at'])}")
    assert "## Changes since prod\n\n- `abcdef1` Fix the login — Dana\n- `1234567` Faster search — Lee\n" \
           "- … and 1 more\n- compare: https://github.com/acme/app/compare/0123456...abcdef1\n" in head
    verdicts = head[head.index("## Verdicts"):].splitlines()[2:]
    assert "- 2 Unit tests: succeeded in 42.5s — 120 tests, 0 failures, 0 errors, 3 skipped" in verdicts
    assert all(line.startswith("- ") for line in verdicts if line)
    assert notes.index("## Verdicts") < notes.index("## Release\n") < notes.index("## Stages")


def test_the_images_section_names_the_digest_each_deploy_ran():
    state = succeeded_release()
    image = "europe-west3-docker.pkg.dev/p/r/app@sha256:" + "cd" * 32
    state.stages["prod-deploy"].result["image"] = image
    notes = render(state, PIPELINE)
    assert "## Images" in notes
    assert f"| Prod deploy (10 % traffic) | succeeded | `{image}` | `web/web-0a1b2c3d4e` |" in notes
    state.stages["prod-deploy"].result.pop("image")
    assert "## Images" not in render(state, PIPELINE), "no section when no stage recorded an image"
