"""The pure mapping from a release's state to GitHub calls (shared/domain/github_reports.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from local.github_api.standin import DESCRIPTION, _invalid
from shared.domain.github_reports import (
    MAX_DESCRIPTION, CommitStatus, CreateDeployment, DeploymentStatus, one_line, reports_for)
from shared.domain.pipeline import load_pipeline
from shared.domain.state import ReleaseStatus, StageStatus, new_release

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = load_pipeline(ROOT / "pipelines" / "sample.yaml")
DASH = "http://dash.example"
STAGING = [s.id for s in PIPELINE.stages if s.environment == "staging" and not s.optional]
PROD = [s.id for s in PIPELINE.stages if s.environment == "prod" and s.kind.value != "approval"]
OPERATIONS = {
    "deployment": DESCRIPTION["paths"]["/repos/{owner}/{repo}/deployments"]["post"],
    "deployment_status": DESCRIPTION["paths"]["/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"]["post"],
    "commit_status": DESCRIPTION["paths"]["/repos/{owner}/{repo}/statuses/{sha}"]["post"],
}


def release(done=(), running=(), failed=None, status=ReleaseStatus.RUNNING, reason="", waiting=False):
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="c0ffee" * 6 + "abcd",
                        version="1.4.0", pushed_by="dev", now=1000.0)
    for sid in done:
        state.stages[sid].status, state.stages[sid].attempt = StageStatus.SUCCEEDED, 1
    for sid in running:
        state.stages[sid].status, state.stages[sid].attempt = StageStatus.RUNNING, 1
    if failed:
        sid, why = failed
        state.stages[sid].status, state.stages[sid].attempt, state.stages[sid].reason = StageStatus.FAILED, 1, why
    if waiting:
        state.stages["approval"].status = StageStatus.WAITING
    state.status, state.reason = status, reason
    return state


def summary(state):
    out = []
    for r in reports_for(PIPELINE, state, DASH):
        if isinstance(r, CreateDeployment):
            out.append(f"create {r.environment}")
        elif isinstance(r, DeploymentStatus):
            out.append(f"{r.environment} {r.state}")
        else:
            out.append(f"commit {r.state}")
    return out


BUILD = [s.id for s in PIPELINE.stages if s.environment == "build"]
TABLE = [
    ("build stages only: no deployment yet", release(done=BUILD[:2]), ["commit pending"]),
    ("staging's first stage runs", release(done=BUILD, running=STAGING[:1]),
     ["create staging", "staging queued", "staging in_progress", "commit pending"]),
    ("waiting for approval", release(done=[*BUILD, *STAGING], waiting=True, status=ReleaseStatus.AWAITING_APPROVAL),
     ["create staging", "staging queued", "staging in_progress", "staging success", "commit pending", "commit pending"]),
    ("succeeded", release(done=[*BUILD, *STAGING, "approval", *PROD], status=ReleaseStatus.SUCCEEDED),
     ["create staging", "staging queued", "staging in_progress", "staging success",
      "create prod", "prod queued", "prod in_progress", "prod success", "commit pending", "commit pending",
      "commit success"]),
    ("bad canary", release(done=[*BUILD, *STAGING, "approval", *PROD[:2]], failed=("prod-smoke", "canary 5xx 5 %"),
                           status=ReleaseStatus.STOPPED),
     ["create staging", "staging queued", "staging in_progress", "staging success",
      "create prod", "prod queued", "prod in_progress", "prod failure", "commit pending", "commit pending",
      "commit failure"]),
    ("cancelled in staging", release(done=BUILD, running=STAGING[:1], status=ReleaseStatus.CANCELLED, reason="no"),
     ["create staging", "staging queued", "staging in_progress", "staging error", "commit pending", "commit error"]),
    ("superseded in staging", release(done=BUILD, running=STAGING[:1], status=ReleaseStatus.SUPERSEDED),
     ["create staging", "staging queued", "staging in_progress", "staging inactive", "commit pending", "commit error"]),
]


@pytest.mark.parametrize("name,state,expected", TABLE, ids=[t[0] for t in TABLE])
def test_each_state_maps_to_the_calls_github_should_see(name, state, expected):
    assert summary(state) == expected


def test_the_calls_say_what_happened_in_our_words():
    state = release(done=[*BUILD, *STAGING, "approval", *PROD[:2]], failed=("prod-smoke", "canary failed: 5xx 5 % vs 0 %"),
                    status=ReleaseStatus.STOPPED)
    reports = reports_for(PIPELINE, state, DASH)
    prod_end = [r for r in reports if isinstance(r, DeploymentStatus) and r.environment == "prod"][-1]
    assert prod_end.description == "Smoke prod failed: canary failed: 5xx 5 % vs 0 %"
    assert prod_end.log_url == f"{DASH}/release/{state.release_id}"
    commit = [r for r in reports if isinstance(r, CommitStatus)]
    assert [c.context for c in commit] == ["release/sample-app"] * 3
    assert commit[1].description == "waiting for approval by approver@example.com"
    create = next(r for r in reports if isinstance(r, CreateDeployment) and r.environment == "prod")
    assert create.body()["auto_merge"] is False and create.body()["required_contexts"] == []
    assert create.ref == state.commit and create.production_environment
    done = release(done=[*BUILD, *STAGING, "approval", *PROD], status=ReleaseStatus.SUCCEEDED)
    assert [r for r in reports_for(PIPELINE, done, DASH) if isinstance(r, CommitStatus)][-1].description == \
        "v1.4.0-c0ffeec serving 100 % in prod"


def test_a_release_that_ended_leaves_nothing_in_progress():
    for status in (ReleaseStatus.CANCELLED, ReleaseStatus.STOPPED, ReleaseStatus.SUPERSEDED):
        state = release(done=BUILD, running=STAGING[:1], status=status, reason="x")
        last = {}
        for r in reports_for(PIPELINE, state, DASH):
            if isinstance(r, DeploymentStatus):
                last[r.environment] = r.state
        assert last and "in_progress" not in last.values(), status


def test_keys_are_stable_as_the_release_moves_on():
    """Keys already sent stay in the list in the same order, so a later sync sends only the new ones."""
    early = reports_for(PIPELINE, release(done=BUILD, running=STAGING[:1]), DASH)
    later = reports_for(PIPELINE, release(done=[*BUILD, *STAGING, "approval", *PROD], status=ReleaseStatus.SUCCEEDED),
                        DASH)
    later_keys = [r.key for r in later]
    assert all(r.key in later_keys for r in early)
    assert [k for k in later_keys if k in {r.key for r in early}] == [r.key for r in early]
    assert len(later_keys) == len(set(later_keys))


@pytest.mark.parametrize("text,expected", [
    ("short", "short"), ("two\nlines\ttab", "two lines tab"), ("x" * 200, "x" * 139 + "…"),
    ("e\u0301" * 100, "e\u0301" * 69 + "…"), ("\ud800bad", "\ufffdbad"), ("", ""),
])
def test_one_line_is_printable_and_bounded(text, expected):
    assert one_line(text) == expected


@settings(max_examples=150, deadline=None)
@given(reason=st.text(max_size=600), status=st.sampled_from([ReleaseStatus.STOPPED, ReleaseStatus.CANCELLED,
                                                            ReleaseStatus.SUPERSEDED]))
def test_no_reason_text_yields_a_request_github_refuses(reason, status):
    state = release(done=[*BUILD, *STAGING, "approval", *PROD[:2]], failed=("prod-smoke", reason), status=status,
                    reason=reason)
    state.superseded_by = reason
    for report in reports_for(PIPELINE, state, DASH):
        body = report.body()
        kind = ("deployment" if isinstance(report, CreateDeployment) else
                "deployment_status" if isinstance(report, DeploymentStatus) else "commit_status")
        assert _invalid(OPERATIONS[kind], body) == ""
        assert len(body["description"]) <= MAX_DESCRIPTION and "\n" not in body["description"]
        body_bytes = __import__("json").dumps(body, ensure_ascii=False).encode("utf-8")  # encodable as sent
        assert body_bytes
