"""Property test over generated pipeline files: validation refuses exactly the unsafe orders.

Every generated file is driven through the real gate (``decide``) on the happy path:
each running stage succeeds, every lock is granted, the approval is given when asked.
A file validation accepts must finish without a hazard. For a file validation refuses,
the same drive over the file taken as written (validation skipped) shows the event
sequence that would have run a prod stage without a passed approval (the gate's own
defence stops it there), a check or traffic change before the deploy it refers to, or
prod before staging.
"""
from __future__ import annotations

import random
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.errors import DefinitionError
from shared.domain.events import ApprovalDecided, LockGranted, Outcome, ReleaseStarted, StageFinished
from shared.domain.gate import decide
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import StageStatus, new_release

T0 = 1_800_000_000.0
APPROVER = "boss@example.com"
BUILD = {"steps": [{"name": "local"}]}
TEMPLATES = [  # the seed's flow in its safe order
    ("lint", "build", "build", BUILD),
    ("staging-migrate", "job", "staging", {"job": "m"}),
    ("staging-deploy", "deploy", "staging", {"services": ["web-staging"], "traffic_percent": 100}),
    ("staging-smoke", "check", "staging", {"target": "staging", "service": "web-staging", "paths": ["/"]}),
    ("approval", "approval", "prod", {"approvers": [APPROVER]}),
    ("prod-migrate", "job", "prod", {"job": "m"}),
    ("prod-deploy", "deploy", "prod", {"services": ["web"], "traffic_percent": 10}),
    ("prod-smoke", "check", "prod", {"target": "canary", "service": "web", "paths": ["/"]}),
    ("traffic-100", "traffic", "prod", {"services": ["web"], "percent": 100}),
]
CHECK_ENV = {"staging": "staging", "canary": "prod", "prod": "prod"}


def generate(rnd: random.Random) -> dict:
    """Most keep the safe order with stages left out (some of those are unsafe too), the rest are shuffled."""
    chosen = [t for t in TEMPLATES if rnd.random() < 0.85] or [TEMPLATES[0]]
    if rnd.random() < 0.4:
        rnd.shuffle(chosen)
    return {"name": "gen", "stages": [
        {"id": sid, "kind": kind, "environment": env, "timeout": "5m", "params": params}
        for sid, kind, env, params in chosen]}


def unvalidated(doc):
    with mock.patch("shared.domain.pipeline_order.check_order"):
        return parse_pipeline(doc)


def drive(pipeline) -> tuple[list[str], str]:
    """The happy path through the gate; (the events sent, the first hazard seen or "").
    ``drive.final`` keeps the release status it ended in."""
    state = new_release(pipeline, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.0.0", pushed_by="dev@example.com", now=T0)
    sent: list[str] = []
    started_order: list[str] = []
    n = 0

    def send(event, label):
        nonlocal state, n
        sent.append(label)
        decision = decide(pipeline, state, event, T0 + n)
        state = decision.state or state

    send(ReleaseStarted("e0", state.release_id), "release.started")
    for n in range(1, 80):
        for stage in pipeline.stages:
            st_ = state.stages[stage.id]
            reached = st_.attempt or st_.status not in (StageStatus.PENDING, StageStatus.SKIPPED)
            if reached and stage.id not in started_order:
                started_order.append(stage.id)
                hazard = hazard_of(pipeline, state, stage, started_order)
                if hazard:
                    drive.final = state.status.value
                    return sent, hazard
        if state.status.terminal or state.status.value == "stopped":
            drive.final = state.status.value
            return sent, ""
        if state.status.value == "queued":
            send(LockGranted(f"e{n}", state.release_id, state.waiting_for), f"lock.granted {state.waiting_for}")
            continue
        waiting = [s for s in pipeline.stages if state.stages[s.id].status is StageStatus.WAITING]
        if waiting and state.status.value == "awaiting_approval":
            st_ = state.stages[waiting[0].id]
            send(ApprovalDecided(f"e{n}", state.release_id, waiting[0].id, st_.attempt, f"n{n}", APPROVER, True,
                                 st_.deadline), f"approval.decided {waiting[0].id}")
            continue
        running = [s for s in pipeline.stages if state.stages[s.id].status is StageStatus.RUNNING]
        if not running:
            drive.final = state.status.value
            return sent, ""
        st_ = state.stages[running[0].id]
        send(StageFinished(f"e{n}", state.release_id, running[0].id, st_.stage_run_id, Outcome.SUCCEEDED),
             f"stage.finished {running[0].id}")
    raise AssertionError("the drive did not end")


def hazard_of(pipeline, state, stage, started_order) -> str:
    approval = next((s for s in pipeline.stages if s.kind.value == "approval"), None)
    approved = approval is not None and state.stages[approval.id].status is StageStatus.SUCCEEDED
    if stage.environment == "prod" and stage.kind.value != "approval" and not approved:
        return f"prod stage {stage.id} reached without a passed approval"
    deployed = {}
    for s in pipeline.stages:
        if s.kind.value == "deploy" and state.stages[s.id].status is StageStatus.SUCCEEDED:
            deployed.setdefault(s.environment, set()).update(s.params["services"])
    if stage.kind.value == "check":
        env, service = CHECK_ENV[stage.params["target"]], stage.params.get("service")
        if service not in deployed.get(env, set()):
            return f"check {stage.id} started before the deploy of {service} in {env}"
    if stage.kind.value == "traffic" and not set(stage.params["services"]) <= deployed.get(stage.environment, set()):
        return f"traffic {stage.id} started before the deploy of {list(stage.params['services'])}"
    prod_started = [s for s in started_order[:-1] if pipeline.stage(s).environment == "prod"]
    if stage.environment == "staging" and prod_started:
        return f"staging stage {stage.id} started after prod stage {prod_started[0]}"
    return ""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_validation_refuses_exactly_the_files_whose_order_is_unsafe(rnd):
    doc = generate(rnd)
    try:
        pipeline = parse_pipeline(doc)
    except DefinitionError as refused:
        sent, hazard = drive(unvalidated(doc))
        assert hazard, f"refused ({refused}) but the drive found no hazard: {sent}"
        return
    sent, hazard = drive(pipeline)
    assert not hazard, f"valid file, yet {hazard} after {sent}"
    assert drive.final == "succeeded", (drive.final, sent)


def test_at_least_a_third_of_generated_files_validate():
    """So a validator that refuses everything fails; and enough are refused to matter."""
    valid = 0
    for seed in range(300):
        try:
            parse_pipeline(generate(random.Random(seed)))
            valid += 1
        except DefinitionError:
            pass
    assert 100 <= valid <= 250, valid


def test_a_valid_file_runs_to_the_end_with_prod_only_after_the_approval():
    doc = {"name": "gen", "stages": [
        {"id": sid, "kind": kind, "environment": env, "timeout": "5m", "params": params}
        for sid, kind, env, params in TEMPLATES]}
    sent, hazard = drive(parse_pipeline(doc))
    assert hazard == ""
    assert sent.index("approval.decided approval") < sent.index("stage.finished prod-migrate")
    assert sent[-1] == "stage.finished traffic-100"


def test_approval_last_is_refused_and_the_gate_stops_at_the_first_prod_stage():
    """Why: `relctl validate` accepted a file whose approval came last; prod ran before any approval."""
    order = ["lint", "staging-deploy", "staging-smoke", "prod-migrate", "prod-deploy", "prod-smoke",
             "traffic-100", "approval"]
    by_id = {t[0]: t for t in TEMPLATES}
    doc = {"name": "gen", "stages": [
        {"id": sid, "kind": by_id[sid][1], "environment": by_id[sid][2], "timeout": "5m", "params": by_id[sid][3]}
        for sid in order]}
    try:
        parse_pipeline(doc)
        raise AssertionError("accepted")
    except DefinitionError as exc:
        assert "stage 'prod-migrate': environment: a prod stage must run only after a passed approval" in str(exc)
    sent, hazard = drive(unvalidated(doc))
    assert hazard == "prod stage prod-migrate reached without a passed approval"
    assert drive.final == "stopped", "the gate's own defence stops the release at prod-migrate"
    assert "approval.decided approval" not in sent and "stage.finished prod-migrate" not in sent
