"""When the sweeper must look at a release again, and when it may be deleted."""
from __future__ import annotations

import pytest

from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.domain.wake import QUEUED_RECHECK_S, RETENTION_S, SAFETY_NET_S, expiry, next_wake
from tests.unit.test_notes import PIPELINE

NOW = 1_900_000_000.0


def release(status=ReleaseStatus.RUNNING, stage="unit", stage_status=StageStatus.RUNNING, deadline=NOW + 600):
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="a" * 40, version="1.0.0",
                        pushed_by="dev@example.com", now=NOW)
    state.status = status
    st = state.stages[stage]
    st.status, st.attempt, st.deadline = stage_status, 1, deadline
    return state


@pytest.mark.parametrize("state, expected", [
    (release(), NOW + SAFETY_NET_S),  # its probes have 90 s before the safety net polls
    (release(deadline=NOW + 30), NOW + 30),  # a deadline before that comes first
    (release(ReleaseStatus.QUEUED, stage_status=StageStatus.QUEUED, deadline=None), NOW + QUEUED_RECHECK_S),
    (release(ReleaseStatus.AWAITING_APPROVAL, "approval", StageStatus.WAITING, NOW + 8 * 3600), NOW + 8 * 3600),
    (release(ReleaseStatus.STOPPED, stage_status=StageStatus.FAILED), None),
    (release(ReleaseStatus.SUCCEEDED, stage_status=StageStatus.SUCCEEDED), None),
])
def test_wake_time_by_what_can_need_the_sweeper(state, expected):
    assert next_wake(state, NOW) == expected


def test_unfinished_commands_wake_the_sweeper_at_their_lease_end():
    assert next_wake(release(), NOW, [{"lease_until": NOW + 60}]) == NOW + 60


@pytest.mark.parametrize("status, expires", [
    (ReleaseStatus.SUCCEEDED, True), (ReleaseStatus.SUPERSEDED, True),
    (ReleaseStatus.STOPPED, True), (ReleaseStatus.RUNNING, False), (ReleaseStatus.AWAITING_APPROVAL, False)])
def test_only_stopped_and_finished_releases_expire(status, expires):
    assert expiry(release(status), NOW) == (NOW + RETENTION_S if expires else None)


def test_the_gate_sets_both_and_a_replay_clears_the_expiry():
    from shared.domain.events import StageFinished, StageReplay, Outcome
    from shared.domain.gate import decide

    state = release()
    state.stages["unit"].stage_run_id = f"{state.release_id}.unit.a1"
    failed = decide(PIPELINE, state, StageFinished("e1", state.release_id, "unit", f"{state.release_id}.unit.a1",
                                                   Outcome.FAILED, "exit 1"), NOW + 5).state
    assert failed.status is ReleaseStatus.STOPPED and failed.wake_at is None and failed.expire_at == NOW + 5 + RETENTION_S
    for earlier in PIPELINE.stages[:PIPELINE.index("unit")]:
        failed.stages[earlier.id].status = StageStatus.SUCCEEDED
    replayed = decide(PIPELINE, failed, StageReplay("e2", state.release_id, "unit", "r1", "dev@example.com", "flaky"),
                      NOW + 10).state
    assert replayed.status is ReleaseStatus.RUNNING and replayed.expire_at is None
    assert replayed.wake_at == NOW + 10 + SAFETY_NET_S
