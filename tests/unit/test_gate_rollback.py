"""Rollback tells the truth: back to what served before the release, never to a failed attempt.

Why (issue 11): after a failed canary and a replay of the prod deploy that failed again, the
automatic rollback sent 100 % of prod to the first failed canary (the revision that served
just before the second attempt).
"""
from __future__ import annotations

from shared.domain.commands import RollBack, command_from_dict, command_to_dict
from shared.domain.events import ApprovalDecided, LockGranted, Outcome, ReleaseStarted, StageFinished, StageReplay
from shared.domain.gate import decide
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import StageStatus, new_release
from tests.unit.gate_helpers import APPROVER, DOC, T0, eid

SMOKE = {"id": "prod-smoke", "kind": "check", "environment": "prod", "timeout": "5m",
         "params": {"target": "canary", "service": "web", "paths": ["/"]}}
PIPELINE_DOC = {**DOC, "stages": [*DOC["stages"][:-1], SMOKE, DOC["stages"][-1]]}
PIPELINE = parse_pipeline(PIPELINE_DOC)


def step(state, event, pipeline=PIPELINE):
    decision = decide(pipeline, state, event, T0)
    return decision, decision.state or state


def until(state, stage_id, pipeline=PIPELINE):
    """Happy path (locks granted, approval given, stages succeed) until ``stage_id`` runs."""
    for _ in range(40):
        st = state.stages[stage_id]
        if st.status is StageStatus.RUNNING:
            return state
        if state.status.value == "queued":
            _, state = step(state, LockGranted(eid(), state.release_id, state.waiting_for), pipeline)
            continue
        running = [s.id for s in pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING]
        if not running:
            a = state.stages["approval"]
            _, state = step(state, ApprovalDecided(eid(), state.release_id, "approval", a.attempt, eid(), APPROVER,
                                                   True, a.deadline), pipeline)
            continue
        run = state.stages[running[0]]
        _, state = step(state, StageFinished(eid(), state.release_id, running[0], run.stage_run_id, Outcome.SUCCEEDED),
                        pipeline)
    raise AssertionError(f"{stage_id} never ran")


def deploy_then_fail_smoke(state, canary, serving_before):
    state = until(state, "prod-deploy")
    run = state.stages["prod-deploy"]
    _, state = step(state, StageFinished(eid(), state.release_id, "prod-deploy", run.stage_run_id, Outcome.SUCCEEDED,
                                         "", {"revisions": [{"service": "web", "revision": canary,
                                                             "percent": 10, "serving_before": serving_before}]}))
    state = until(state, "prod-smoke")
    smoke = state.stages["prod-smoke"]
    decision, state = step(state, StageFinished(eid(), state.release_id, "prod-smoke", smoke.stage_run_id,
                                                Outcome.FAILED, "/health/liveliness: 500"))
    (rollback,) = [c for c in decision.commands if isinstance(c, RollBack)]
    return rollback, state


def test_a_second_failed_canary_rolls_back_to_what_served_before_the_release():
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by="dev@example.com", now=T0)
    _, state = step(state, ReleaseStarted(eid(), state.release_id))
    first, state = deploy_then_fail_smoke(state, "web-canary-1", "web-base")
    assert first.targets == {"web": "web-base"} and "prod-smoke" in first.reason and "500" in first.reason
    _, state = step(state, StageReplay(eid(), state.release_id, "prod-deploy", "r1", "ops@example.com", "again"))
    # Say the first rollback was lost: the failed canary still served when the second attempt deployed.
    second, state = deploy_then_fail_smoke(state, "web-canary-2", "web-canary-1")
    assert second.targets == {"web": "web-base"}, "never a revision of a failed attempt"
    assert command_from_dict(command_to_dict(second)) == second


def test_every_rollback_is_shown_with_who_when_from_to_and_why():
    from shared.ui.cli import show_text
    from shared.ui.notes import render

    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by="dev@example.com", now=T0)
    state.stages["prod-deploy"].result["rolled_back"] = [
        {"service": "web", "from": "web-canary-1", "revision": "web-base", "at": T0, "by": "the gate",
         "why": "stage 'prod-smoke' failed: 500"}]
    line = "rolled back web from web-canary-1 to web-base at 2027-01-15T08:00:00Z by the gate: stage 'prod-smoke' failed: 500"
    assert line in render(state, PIPELINE)
    assert line in show_text(state, PIPELINE)


def test_the_dashboard_and_the_failure_notice_say_rolled_back():
    from shared.domain.commands import Notify
    from shared.ui.dashboard import release_json

    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by="dev@example.com", now=T0)
    _, state = step(state, ReleaseStarted(eid(), state.release_id))
    state = until(state, "prod-deploy")
    run = state.stages["prod-deploy"]
    _, state = step(state, StageFinished(eid(), state.release_id, "prod-deploy", run.stage_run_id, Outcome.SUCCEEDED,
                                         "", {"revisions": [{"service": "web", "revision": "web-c1", "percent": 10,
                                                             "serving_before": "web-base"}]}))
    state = until(state, "prod-smoke")
    smoke = state.stages["prod-smoke"]
    decision, state = step(state, StageFinished(eid(), state.release_id, "prod-smoke", smoke.stage_run_id,
                                                Outcome.FAILED, "500"))
    (notice,) = [c for c in decision.commands if isinstance(c, Notify)]
    assert "Rolled back prod-deploy: all traffic of web to web-base" in notice.message
    state.stages["prod-deploy"].result["rolled_back"] = [
        {"service": "web", "from": "web-c1", "revision": "web-base", "at": T0, "by": "the gate", "why": "500"}]
    assert "rolled back web from web-c1 to web-base" in release_json(state, PIPELINE)["release"]["traffic_text"]


def test_a_failed_canary_rolls_back_the_background_services_the_deploy_rolled_in_too():
    """noesis2's prod deploy puts worker and beat at 100 % beside the web canary: a failed smoke
    (or a cancel) must take them back as well, or prod runs the rejected release's workers."""
    stages = [dict(s, params={**s["params"], "background_services": ["worker"]}) if s["id"] == "prod-deploy" else s
              for s in PIPELINE_DOC["stages"]]
    pipeline = parse_pipeline({**PIPELINE_DOC, "stages": stages})
    state = new_release(pipeline, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by="dev@example.com", now=T0)
    _, state = step(state, ReleaseStarted(eid(), state.release_id), pipeline)
    state = until(state, "prod-deploy", pipeline)
    run = state.stages["prod-deploy"]
    revisions = [{"service": "web", "revision": "web-new", "percent": 10, "serving_before": "web-base"},
                 {"service": "worker", "revision": "worker-new", "percent": 100, "serving_before": "worker-base"}]
    _, state = step(state, StageFinished(eid(), state.release_id, "prod-deploy", run.stage_run_id,
                                         Outcome.SUCCEEDED, "", {"revisions": revisions}), pipeline)
    state = until(state, "prod-smoke", pipeline)
    smoke = state.stages["prod-smoke"]
    decision, _ = step(state, StageFinished(eid(), state.release_id, "prod-smoke", smoke.stage_run_id,
                                            Outcome.FAILED, "/: 500"), pipeline)
    (rollback,) = [c for c in decision.commands if isinstance(c, RollBack)]
    assert rollback.services == ("web", "worker")
    assert rollback.targets == {"web": "web-base", "worker": "worker-base"}


def failed_canary():
    """A release whose canary web-2 (10 %, web-1 before it) failed its prod smoke: (decision, state)."""
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by="dev@example.com", now=T0)
    _, state = step(state, ReleaseStarted(eid(), state.release_id))
    state = until(state, "prod-deploy")
    run = state.stages["prod-deploy"]
    _, state = step(state, StageFinished(eid(), state.release_id, "prod-deploy", run.stage_run_id, Outcome.SUCCEEDED,
                                         "", {"revisions": [{"service": "web", "revision": "web-2", "percent": 10,
                                                             "serving_before": "web-1"}]}))
    state = until(state, "prod-smoke")
    return step(state, StageFinished(eid(), state.release_id, "prod-smoke",
                                     state.stages["prod-smoke"].stage_run_id, Outcome.FAILED, "500"))


def test_after_a_rolled_back_canary_a_replay_of_a_later_stage_is_refused_naming_the_deploy():
    """Found by tests/integration/test_rollback_properties.py: [push, approve, deploy, smoke fails (rolled
    back), replay prod-smoke, smoke passes] put 100 % on the rolled-back revision through traffic-100."""
    _, state = failed_canary()
    deployed = state.stages["prod-deploy"]
    deployed.result = {**deployed.result, "rolled_back": [  # what the dispatcher records once the RollBack ran
        {"service": "web", "from": "web-2", "to": "web-1", "at": T0, "by": "the gate", "why": "smoke failed"}]}
    refused, _ = step(state, StageReplay(eid(), state.release_id, "prod-smoke", "r-1", "ops@example.com", "again"))
    assert refused.outcome.value == "refused"
    assert "replay prod-deploy" in refused.reason and "rolled back" in refused.reason
    replayed, state = step(state, StageReplay(eid(), state.release_id, "prod-deploy", "r-2", "ops@example.com", "again"))
    assert replayed.outcome.value == "applied", replayed.reason
    assert not state.stages["prod-deploy"].result.get("rolled_back")  # the new attempt starts clean


def test_after_a_rolled_back_canary_the_notice_names_the_replay_the_gate_accepts():
    """Issue 26: the notice said "replay prod-smoke", which fails at once (the canary tag is gone)."""
    from shared.domain.commands import Notify

    decision, state = failed_canary()
    (notice,) = [c for c in decision.commands if isinstance(c, Notify)]
    assert f"`relctl replay {state.release_id} prod-deploy --reason \"…\"` (or push a new commit)." in notice.message
    assert "replay " + state.release_id + " prod-smoke" not in notice.message
    replayed, state = step(state, StageReplay(eid(), state.release_id, "prod-deploy", "r-1", "ops@example.com", "again"))
    assert replayed.outcome.value == "applied", replayed.reason
    assert state.stages["prod-deploy"].status is StageStatus.QUEUED and state.waiting_for == "prod"  # lock first
