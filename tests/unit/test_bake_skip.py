"""Ending a bake early (relctl skip-bake) and manual rollbacks on the timeline: the pure core."""
from __future__ import annotations

import copy

from shared.app.manual_rollback import deploying_release
from shared.domain.bake_skip import SKIP_PHASE, skip_probe_task, skip_refusal, skip_step
from shared.domain.commands import EndBakeEarly, NoticeKind, Notify
from shared.domain.events import BakeSkipRequested, Outcome, RolledBack, StageFinished
from shared.domain.gate import GateOutcome, decide
from shared.domain.pipeline import parse_pipeline
from shared.domain.probes import IntervalVerdict, ProbeVerdict
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.ui.notes import render, rollback_lines
from tests.unit import gate_helpers as h
from tests.unit.gate_helpers import APPROVER, PUSHER, T0, eid

DOC = copy.deepcopy(h.DOC)
DOC["name"] = "mini-bake"
DOC["stages"].insert(9, {"id": "prod-smoke", "kind": "check", "environment": "prod", "timeout": "5m",
                         "params": {"target": "canary", "paths": ["/"], "window": "20s", "bake": "2m"}})
PIPELINE = parse_pipeline(DOC)


def baking(now=T0):
    """A release whose prod smoke runs (its bake), every stage before it passed."""
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by=PUSHER, now=now)
    state = decide(PIPELINE, state, h.started(state.release_id), now).state
    for _ in range(40):
        state = _settle(state, now)
        running = [s.id for s in PIPELINE.stages if state.stages[s.id].status.value in ("running", "waiting")]
        if running[0] == "prod-smoke":
            state.stages["prod-smoke"].result = {"url": "http://127.0.0.1:9/", "paths": ["/"], "window_s": 20,
                                                 "bake_s": 120, "interval_s": 5}
            return state
        event = h.approval(state) if running[0] == "approval" else h.finished(state, running[0])
        state = decide(PIPELINE, state, event, now).state
    raise AssertionError("never reached prod-smoke")


def _settle(state, now):
    while state.status is ReleaseStatus.QUEUED:
        state = decide(PIPELINE, state, h.granted(state), now).state
    return state


def skip(state, who=APPROVER, reason="canary is fine"):
    return BakeSkipRequested(eid(), state.release_id, "prod-smoke", who, reason, "req-skip")


def test_only_an_approver_of_the_release_may_end_a_running_bake():
    state = baking()
    assert skip_refusal(PIPELINE, state, "prod-smoke", APPROVER) == (0, "")
    assert skip_refusal(PIPELINE, state, "prod-smoke", "Boss@Example.com") == (0, "")  # normalised
    status, why = skip_refusal(PIPELINE, state, "prod-smoke", "ops@example.com")
    assert status == 403 and "only an approver" in why
    status, why = skip_refusal(PIPELINE, state, "prod-smoke", PUSHER)  # on the list, but it is their push
    assert status == 403 and "pushed" in why
    assert skip_refusal(PIPELINE, state, "prod-deploy", APPROVER)[0] == 409  # no bake there
    assert skip_refusal(PIPELINE, state, "nope", APPROVER)[0] == 404


def test_the_gate_records_the_request_and_sends_the_skip_probe_but_ends_nothing_itself():
    state = baking()
    decision = decide(PIPELINE, state, skip(state), T0 + 30)
    assert decision.outcome is GateOutcome.APPLIED
    new = decision.state
    assert new.stages["prod-smoke"].status is StageStatus.RUNNING  # only the probe's verdict ends it
    (entry,) = [e for e in new.timeline if e["kind"] == "bake skip requested"]
    assert (entry["by"], entry["at"], entry["reason"], entry["stage"]) == (APPROVER, T0 + 30, "canary is fine",
                                                                           "prod-smoke")
    (command,) = [c for c in decision.commands if isinstance(c, EndBakeEarly)]
    assert command.stage_run_id == new.stages["prod-smoke"].stage_run_id
    again = decide(PIPELINE, new, skip(new), T0 + 31)
    assert again.outcome is GateOutcome.REFUSED and "already asked" in again.reason
    other = decide(PIPELINE, state, skip(state, who="ops@example.com"), T0 + 30)
    assert other.outcome is GateOutcome.REFUSED and other.state is None


def verdict(kind, evidence="numbers"):
    return lambda config, interval: IntervalVerdict(kind, evidence, {"window": [interval.start, interval.end]})


def skip_task(state):
    state = decide(PIPELINE, state, skip(state), T0 + 30).state
    task = skip_probe_task(state.release_id, "prod-smoke", state.stages["prod-smoke"], PIPELINE.digest)
    assert task.check["phase"] == SKIP_PHASE and task.check["skip"]["by"] == APPROVER
    return state, task


def test_a_passing_skip_probe_ends_the_bake_early_through_the_gate():
    state, task = skip_task(baking())
    step = skip_step(task, [{"path": "/", "status": 200, "latency_ms": 3}], T0 + 31, verdict(ProbeVerdict.PASS))
    assert step.outcome is Outcome.SUCCEEDED
    assert step.result["bake"]["ended_early"] == {"by": APPROVER, "reason": "canary is fine", "at": T0 + 31}
    st = state.stages["prod-smoke"]
    finish = StageFinished(eid(), state.release_id, "prod-smoke", st.stage_run_id, step.outcome, step.reason,
                           dict(step.result))
    new = decide(PIPELINE, state, finish, T0 + 32).state
    assert new.stages["prod-smoke"].status is StageStatus.SUCCEEDED
    assert new.stages["traffic-100"].status in (StageStatus.RUNNING, StageStatus.QUEUED)
    assert [e["kind"] for e in new.timeline][-2:] == ["bake skip requested", "bake ended early"]
    assert "bake ended early" in render(new, PIPELINE)


def test_a_skip_never_turns_a_failing_check_into_a_pass():
    state, task = skip_task(baking())
    failed = skip_step(task, [{"path": "/", "status": 200}], T0 + 31, verdict(ProbeVerdict.FAIL, "5xx 4 %"))
    assert failed.outcome is Outcome.FAILED and "analysis failed the bake" in failed.reason and "5xx 4 %" in failed.reason
    bad_get = skip_step(task, [{"path": "/", "status": 503}], T0 + 31, verdict(ProbeVerdict.PASS))
    assert bad_get.outcome is Outcome.FAILED and "GET / answered 503" in bad_get.reason
    st = state.stages["prod-smoke"]
    finish = StageFinished(eid(), state.release_id, "prod-smoke", st.stage_run_id, failed.outcome, failed.reason,
                           dict(failed.result))
    new = decide(PIPELINE, state, finish, T0 + 32).state
    assert new.stages["prod-smoke"].status is StageStatus.FAILED and new.status is ReleaseStatus.STOPPED
    assert new.timeline[-1]["kind"] == "bake not ended early"


def test_an_inconclusive_analysis_asks_again_and_leaves_the_end_to_the_chain():
    state, task = skip_task(baking())
    step = skip_step(task, [{"path": "/", "status": 200}], T0 + 31, verdict(ProbeVerdict.INCONCLUSIVE, "few requests"))
    assert step.outcome is None and step.task.seq == task.seq + 1 and step.at == T0 + 36
    late = skip_step(task, [{"path": "/", "status": 200}], task.started_at + 139, verdict(ProbeVerdict.INCONCLUSIVE))
    assert late.outcome is None and late.task is None  # the bake's own end decides, as if nobody asked


def finished_release():
    state = baking()
    st = state.stages["prod-deploy"]
    st.result = {**st.result, "revisions": [{"service": "web", "revision": "web-new", "serving_before": "web-old"}]}
    while state.status is not ReleaseStatus.SUCCEEDED:
        state = _settle(state, T0)
        running = [s.id for s in PIPELINE.stages if state.stages[s.id].status.value == "running"]
        state = decide(PIPELINE, state, h.finished(state, running[0]), T0).state
    return state


def test_a_manual_rollback_is_recorded_on_the_finished_release_that_deployed_the_service():
    state = finished_release()
    assert deploying_release([state], "web") == (state, "prod-deploy")
    assert deploying_release([state], "other") is None
    event = RolledBack(eid(), state.release_id, "prod-deploy", "web", "web-new", "web-old", "ops@example.com",
                       "slow pages", "req-rb")
    decision = decide(PIPELINE, state, event, T0 + 100)
    assert decision.outcome is GateOutcome.APPLIED
    new = decision.state
    assert new.status is ReleaseStatus.SUCCEEDED
    (entry,) = new.stages["prod-deploy"].result["rolled_back"]
    assert (entry["from"], entry["revision"], entry["by"], entry["why"], entry["at"]) == (
        "web-new", "web-old", "ops@example.com", "slow pages", T0 + 100)
    assert new.timeline[-1]["kind"] == "rolled back" and "web from web-new to web-old" in new.timeline[-1]["reason"]
    (notice,) = [c for c in decision.commands if isinstance(c, Notify)]
    assert notice.kind is NoticeKind.ROLLED_BACK and "ops@example.com rolled back web" in notice.message
    assert any("rolled back web from web-new to web-old" in line and "by ops@example.com: slow pages" in line
               for line in rollback_lines(new, PIPELINE))
    assert decide(PIPELINE, new, RolledBack(eid(), *[getattr(event, f) for f in (
        "release_id", "stage", "service", "from_revision", "to_revision", "requested_by", "reason",
        "request_id")]), T0 + 101).outcome is GateOutcome.IGNORED


def test_show_no_longer_says_a_rolled_back_release_serves_its_traffic():
    """Why (issue 24): after a rollback by hand, `show` kept saying "traffic-100 … 100 % traffic since …"
    for a revision that no longer served."""
    from shared.ui.dashboard import stage_detail

    state = finished_release()
    traffic = next(s for s in PIPELINE.stages if s.kind.value == "traffic")
    assert "% traffic since" in stage_detail(traffic, state.stages[traffic.id], state, PIPELINE)
    new = decide(PIPELINE, state, RolledBack(eid(), state.release_id, "prod-deploy", "web", "web-new", "web-old",
                                             "ops@example.com", "slow", "req-show"), T0 + 100).state
    detail = stage_detail(traffic, new.stages[traffic.id], new, PIPELINE)
    assert "until rolled back at" in detail and "to web-old" in detail and "since" not in detail


def test_a_rollback_still_rolling_out_is_followed_and_recorded_only_when_it_lands():
    from shared.domain.commands import FollowRollback
    from shared.domain.wire import from_payload

    state = finished_release()
    pending = RolledBack(eid(), state.release_id, "prod-deploy", "web", "web-new", "web-old", "ops@example.com",
                         "slow", "req-slow", "operations/op-1", landed=False)
    decision = decide(PIPELINE, state, pending, T0 + 100)
    (follow,) = [c for c in decision.commands if isinstance(c, FollowRollback)]
    assert (follow.service, follow.revision, follow.operation) == ("web", "web-old", "operations/op-1")
    assert not decision.state.stages["prod-deploy"].result.get("rolled_back")
    assert decision.state.timeline[-1]["kind"] == "rollback rolling out"
    landed = from_payload(eid(), dict(follow.landed))
    assert isinstance(landed, RolledBack) and landed.landed and landed.request_id == "req-slow"
    done = decide(PIPELINE, decision.state, landed, T0 + 200).state
    (entry,) = done.stages["prod-deploy"].result["rolled_back"]
    assert (entry["revision"], entry["at"]) == ("web-old", T0 + 200)
