"""A small pipeline with every kind, and event builders, shared by the gate tests."""
from __future__ import annotations

import itertools

from shared.domain.events import (
    ApprovalDecided,
    ChaosRequested,
    LockGranted,
    Outcome,
    ReleaseStarted,
    StageFinished,
    StageReplay,
    Tick,
)
from shared.domain.gate import decide
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import new_release

T0 = 1_800_000_000.0
PUSHER = "dev@example.com"
APPROVER = "boss@example.com"

DOC = {
    "name": "mini",
    "stages": [
        {"id": "lint", "kind": "build", "timeout": "10m", "params": {"steps": [{"name": "local"}]}},
        {"id": "unit", "kind": "build", "timeout": "10m", "params": {"steps": [{"name": "local"}]}},
        {"id": "staging-migrate", "kind": "job", "environment": "staging", "timeout": "5m", "params": {"job": "m"}},
        {"id": "staging-deploy", "kind": "deploy", "environment": "staging", "timeout": "5m",
         "params": {"services": ["web"], "traffic_percent": 100}},
        {"id": "staging-smoke", "kind": "check", "environment": "staging", "timeout": "5m",
         "params": {"target": "staging", "paths": ["/"]}},
        {"id": "chaos", "number": "5a", "kind": "build", "optional": True, "environment": "staging",
         "timeout": "30m", "params": {"steps": [{"name": "local"}]}},
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "24h",
         "params": {"approvers": [APPROVER, PUSHER], "expiry_s": 3600}},
        {"id": "prod-migrate", "kind": "job", "environment": "prod", "timeout": "5m", "params": {"job": "m"}},
        {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "5m",
         "params": {"services": ["web"], "traffic_percent": 10}},
        {"id": "traffic-100", "kind": "traffic", "environment": "prod", "timeout": "5m",
         "params": {"services": ["web"], "percent": 100}},
    ],
}
PIPELINE = parse_pipeline(DOC)
STAGES = [s.id for s in PIPELINE.stages]
APPROVAL_INDEX = STAGES.index("approval")
_ids = itertools.count(1)


def fresh_state():
    return new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                       version="1.2.3", pushed_by=PUSHER, now=T0)


def eid() -> str:
    return f"e{next(_ids)}"


def started(release_id):
    return ReleaseStarted(eid(), release_id)


def finished(state, stage, outcome=Outcome.SUCCEEDED, reason=""):
    run_id = state.stages[stage].stage_run_id if stage in state.stages else f"{state.release_id}.{stage}.a1"
    return StageFinished(eid(), state.release_id, stage, run_id, outcome, reason, {})


def approval(state, approver=APPROVER, approve=True, nonce=None, attempt=None, expires_at=None):
    st = state.stages["approval"]
    return ApprovalDecided(
        eid(), state.release_id, "approval", st.attempt if attempt is None else attempt,
        nonce or f"n{next(_ids)}", approver, approve, st.deadline if expires_at is None else expires_at,
    )


def chaos(state, who="qa@example.com"):
    return ChaosRequested(eid(), state.release_id, who)


def replay(state, stage, replay_id=None, who="ops@example.com"):
    return StageReplay(eid(), state.release_id, stage, replay_id or f"r{next(_ids)}", who)


def granted(state, environment=None):
    return LockGranted(eid(), state.release_id, environment or state.waiting_for)


def settle(state, now=T0):
    """Grant the lock a queued release waits for, as shared/app/locks.py does when it is free."""
    while state.status.value == "queued":
        state = decide(PIPELINE, state, granted(state), now).state
    return state


def tick(state):
    return Tick(eid(), state.release_id)


def run_to(stage_id, now=T0):
    """A state in which every stage before ``stage_id`` succeeded and it is running or waiting."""
    state = fresh_state()
    state = decide(PIPELINE, state, started(state.release_id), now).state
    while True:
        state = settle(state, now)
        current = [s for s in STAGES if state.stages[s].status.value in ("running", "waiting")]
        if current and current[0] == stage_id:
            return state
        stage = current[0]
        if stage == "approval":
            state = decide(PIPELINE, state, approval(state), now).state
        else:
            state = decide(PIPELINE, state, finished(state, stage), now).state
