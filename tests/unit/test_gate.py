"""The gate's rules, one test (or table row) per rule."""
from __future__ import annotations

import pytest

from shared.domain.commands import AcquireLock, NoticeKind, Notify, ReleaseLock, RequestApproval, RollBack, StartStage
from shared.domain.events import Outcome, Superseded
from shared.adapters.notify.messages import format_notice
from shared.domain.gate import GateOutcome, decide
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus
from tests.unit.gate_helpers import (
    APPROVER,
    PIPELINE,
    PUSHER,
    STAGES,
    T0,
    approval,
    chaos,
    finished,
    fresh_state,
    granted,
    replay,
    run_to,
    settle,
    started,
    tick,
)


def starts(decision):
    """Stages the decision starts, once the environment lock it asks for is granted."""
    started_now = [c.stage for c in decision.commands if isinstance(c, StartStage)]
    if not started_now and decision.state is not None and decision.state.status is ReleaseStatus.QUEUED:
        return starts(decide(PIPELINE, decision.state, granted(decision.state), T0))
    return started_now


def go(state, event, now=T0):
    """Apply an event and grant any free lock the release then asks for."""
    return settle(decide(PIPELINE, state, event, now).state, now)


def test_release_started_starts_the_first_stage_only():
    state = fresh_state()
    d = decide(PIPELINE, state, started(state.release_id), T0)
    assert d.outcome is GateOutcome.APPLIED
    assert starts(d) == ["lint"]
    assert d.state.stages["lint"].status is StageStatus.RUNNING
    assert d.state.stages["lint"].stage_run_id == f"{state.release_id}.lint.a1"
    assert state.stages["lint"].status is StageStatus.PENDING, "the input state must not change"


def test_second_release_started_is_ignored():
    state = run_to("unit")
    d = decide(PIPELINE, state, started(state.release_id), T0)
    assert d.outcome is GateOutcome.IGNORED and d.state is None


# The optional chaos stage and the approval have their own tests below.
@pytest.mark.parametrize("index", [i for i, s in enumerate(STAGES[:-1]) if s not in ("chaos", "approval")])
def test_each_success_starts_exactly_the_next_stage(index):
    stage = STAGES[index]
    state = run_to(stage)
    d = decide(PIPELINE, state, finished(state, stage), T0 + 1)
    assert d.outcome is GateOutcome.APPLIED
    following = STAGES[index + 1]
    if following == "chaos":
        following = "approval"
    if following == "approval":
        assert d.state.status is ReleaseStatus.AWAITING_APPROVAL
        assert [type(c) for c in d.commands if not isinstance(c, Notify)] == [ReleaseLock, RequestApproval]
    elif PIPELINE.stage(following).environment not in d.state.locks_held + ["build"]:
        env = PIPELINE.stage(following).environment
        assert d.commands == (AcquireLock(state.release_id, env, state.created_at),)
        assert d.state.status is ReleaseStatus.QUEUED and d.state.stages[following].status is StageStatus.QUEUED
        assert starts(d) == [following]
    else:
        assert starts(d) == [following]
    assert d.state.stages[stage].status is StageStatus.SUCCEEDED


def test_failed_stage_stops_the_release_and_names_the_stage():
    state = run_to("staging-migrate")
    d = decide(PIPELINE, state, finished(state, "staging-migrate", Outcome.FAILED, "exit 3"), T0 + 5)
    assert d.state.status is ReleaseStatus.STOPPED
    assert d.state.stopped_at_stage == "staging-migrate"
    assert "stage 3 'staging-migrate' failed: exit 3" in d.state.reason
    assert starts(d) == []
    notices = [c for c in d.commands if isinstance(c, Notify)]
    assert notices and notices[0].kind is NoticeKind.STAGE_FAILED and "replay" in notices[0].message


@pytest.mark.parametrize(
    "make_event, expected",
    [
        (lambda s: finished(s, "unit"), GateOutcome.STALE),  # out of order: unit not running
        (lambda s: finished(s, "nope"), GateOutcome.UNKNOWN_STAGE),
        (lambda s: finished(s, "lint").__class__(
            "x1", s.release_id, "lint", s.release_id + ".lint.a0", Outcome.SUCCEEDED), GateOutcome.STALE),
        (lambda s: finished(s, "approval"), GateOutcome.STALE),  # forged finish of the approval: not its run
    ],
)
def test_events_that_change_nothing(make_event, expected):
    state = run_to("lint")
    d = decide(PIPELINE, state, make_event(state), T0)
    assert d.outcome is expected
    assert d.state is None and d.commands == ()


def test_duplicate_event_id_changes_nothing():
    state = run_to("lint")
    event = finished(state, "lint")
    first = decide(PIPELINE, state, event, T0)
    again = decide(PIPELINE, first.state, event, T0)
    assert again.outcome is GateOutcome.DUPLICATE and again.state is None


def test_second_completion_of_same_run_with_new_event_id_is_stale():
    state = run_to("lint")
    first = decide(PIPELINE, state, finished(state, "lint"), T0)
    again = decide(PIPELINE, first.state, finished(state, "lint"), T0)
    assert again.outcome is GateOutcome.STALE


def test_terminal_release_never_moves():
    state = run_to("traffic-100")
    done = go(state, finished(state, "traffic-100"), T0)
    assert done.status is ReleaseStatus.SUCCEEDED
    for event in (started(done.release_id), replay(done, "lint"), tick(done), finished(state, "traffic-100")):
        d = decide(PIPELINE, done, event, T0 + 10**6)
        assert d.outcome is GateOutcome.TERMINAL and d.state is None
    refused = decide(PIPELINE, done, replay(done, "prod-deploy"), T0)
    assert [(c.kind, "refused: release" in c.message) for c in refused.commands] == [(NoticeKind.REFUSED, True)]


def test_release_finishing_notifies_and_skips_unrequested_chaos():
    state = run_to("traffic-100")
    d = decide(PIPELINE, state, finished(state, "traffic-100"), T0)
    assert d.state.stages["chaos"].status is StageStatus.SKIPPED
    assert any(isinstance(c, Notify) and c.kind is NoticeKind.RELEASE_FINISHED for c in d.commands)


def test_stage_past_its_timeout_fails_on_tick_and_late_completion_is_stale():
    state = run_to("staging-migrate", now=T0)
    deadline = state.stages["staging-migrate"].deadline
    assert decide(PIPELINE, state, tick(state), deadline).outcome is GateOutcome.IGNORED
    d = decide(PIPELINE, state, tick(state), deadline + 1)
    assert d.state.status is ReleaseStatus.STOPPED
    assert "timed out after 300s" in d.state.reason
    late = decide(PIPELINE, state, finished(state, "staging-migrate"), deadline + 1)
    assert late.outcome is GateOutcome.STALE
    assert late.state.stages["staging-migrate"].status is StageStatus.FAILED, "the expiry itself is written"


class TestChaos:
    def test_refused_before_staging_smoke_passed(self):
        state = run_to("staging-smoke")
        d = decide(PIPELINE, state, chaos(state), T0)
        assert d.outcome is GateOutcome.REFUSED and "after stage 5 'staging-smoke' passed" in d.reason
        assert d.state is None

    def test_runs_when_requested_and_blocks_approval_until_done(self):
        state = run_to("approval")
        d = decide(PIPELINE, state, chaos(state), T0)
        assert d.state.status is ReleaseStatus.QUEUED, "chaos needs the staging lock back"
        assert starts(d) == ["chaos"]
        running = settle(d.state)
        assert running.status is ReleaseStatus.RUNNING
        blocked = decide(PIPELINE, running, approval(running), T0)
        assert blocked.outcome is GateOutcome.REFUSED
        done = go(running, finished(running, "chaos"), T0)
        assert done.status is ReleaseStatus.AWAITING_APPROVAL
        ok = decide(PIPELINE, done, approval(done), T0)
        assert starts(ok) == ["prod-migrate"]

    def test_failed_chaos_stops_the_release(self):
        state = run_to("approval")
        running = go(state, chaos(state), T0)
        d = decide(PIPELINE, running, finished(running, "chaos", Outcome.FAILED, "error rate 7.0 % >= 5 %"), T0)
        assert d.state.status is ReleaseStatus.STOPPED and d.state.stopped_at_stage == "chaos"
        assert decide(PIPELINE, d.state, approval(d.state), T0).outcome is GateOutcome.REFUSED

    def test_second_request_refused(self):
        state = run_to("approval")
        running = go(state, chaos(state), T0)
        assert decide(PIPELINE, running, chaos(running), T0).outcome is GateOutcome.REFUSED


class TestApproval:
    def test_waiting_release_requests_links_without_the_pusher(self):
        state = run_to("staging-smoke")
        d = decide(PIPELINE, state, finished(state, "staging-smoke"), T0)
        request = [c for c in d.commands if isinstance(c, RequestApproval)][0]
        assert request.approvers == (APPROVER,)
        assert request.expires_at == T0 + 3600

    @pytest.mark.parametrize(
        "kwargs, outcome, words",
        [
            ({"approver": "mallory@example.com"}, GateOutcome.REFUSED, "is not an approver"),
            ({"approver": PUSHER}, GateOutcome.REFUSED, "pushed this commit"),
            ({"attempt": 7}, GateOutcome.STALE, "not waiting for this approval request"),
            ({"expires_at": T0 - 1}, GateOutcome.REFUSED, "expired"),
        ],
    )
    def test_invalid_decisions_change_nothing(self, kwargs, outcome, words):
        state = run_to("approval")
        d = decide(PIPELINE, state, approval(state, **kwargs), T0 + 1)
        assert d.outcome is outcome and words in d.reason and d.state is None

    def test_expired_approval_fails_the_stage(self):
        state = run_to("approval")
        d = decide(PIPELINE, state, approval(state), T0 + 3601)
        assert d.state.stages["approval"].status is StageStatus.FAILED
        assert d.state.reason.endswith("approval expired")
        assert starts(d) == []

    def test_reused_nonce_refused(self):
        state = run_to("approval")
        first = approval(state)
        rejected = decide(PIPELINE, state, first.__class__(**{**first.__dict__, "id": "z1", "approve": False}), T0)
        assert rejected.state.status is ReleaseStatus.STOPPED
        assert "rejected by boss@example.com" in rejected.state.reason
        again = replay(rejected.state, "approval")
        waiting = go(rejected.state, again, T0)
        reuse = first.__class__(**{**first.__dict__, "id": "z2", "attempt": waiting.stages["approval"].attempt})
        assert decide(PIPELINE, waiting, reuse, T0).outcome is GateOutcome.REFUSED

    def test_valid_approval_records_who_and_when(self):
        state = run_to("approval")
        d = decide(PIPELINE, state, approval(state), T0 + 60)
        assert d.state.approval["approver"] == APPROVER and d.state.approval["at"] == T0 + 60
        assert starts(d) == ["prod-migrate"]


class TestReplay:
    def test_replay_of_failed_stage_resumes_the_release(self):
        state = run_to("staging-deploy")
        stopped = go(state, finished(state, "staging-deploy", Outcome.FAILED, "boom"), T0)
        d = decide(PIPELINE, stopped, replay(stopped, "staging-deploy"), T0 + 5)
        assert d.outcome is GateOutcome.APPLIED and starts(d) == ["staging-deploy"]
        running = settle(d.state)  # the stop gave the staging lock back
        st = running.stages["staging-deploy"]
        assert st.attempt == 2 and st.stage_run_id.endswith(".a2")
        assert [a.status for a in st.history] == ["failed"]
        assert running.status is ReleaseStatus.RUNNING
        resumed = decide(PIPELINE, running, finished(running, "staging-deploy"), T0 + 6)
        assert starts(resumed) == ["staging-smoke"]

    def test_old_attempt_completion_is_stale_after_replay(self):
        state = run_to("unit")
        stopped = go(state, finished(state, "unit", Outcome.FAILED), T0)
        old = finished(stopped, "unit")  # carries attempt 1's run id
        again = go(stopped, replay(stopped, "unit"), T0)
        assert decide(PIPELINE, again, old, T0).outcome is GateOutcome.STALE

    @pytest.mark.parametrize(
        "stage, words",
        [("nope", "unknown stage"), ("prod-migrate", "needs a valid approval"), ("staging-smoke", "has not run yet")],
    )
    def test_refusals_are_recorded_and_published(self, stage, words):
        state = run_to("staging-deploy")
        stopped = go(state, finished(state, "staging-deploy", Outcome.FAILED), T0)
        d = decide(PIPELINE, stopped, replay(stopped, stage, replay_id="R1"), T0)
        assert d.outcome is (GateOutcome.UNKNOWN_STAGE if stage == "nope" else GateOutcome.REFUSED)
        assert words in d.reason and d.state.replays[-1]["accepted"] is False and d.state.status is ReleaseStatus.STOPPED
        assert [c.kind for c in d.commands] == [NoticeKind.REFUSED]
        assert decide(PIPELINE, d.state, replay(d.state, stage, replay_id="R1"), T0).outcome is GateOutcome.DUPLICATE

    def test_same_replay_id_is_a_no_op(self):
        state = run_to("unit")
        stopped = go(state, finished(state, "unit", Outcome.FAILED), T0)
        first = go(stopped, replay(stopped, "unit", replay_id="same"), T0)
        d = decide(PIPELINE, first, replay(first, "unit", replay_id="same"), T0)
        assert d.outcome is GateOutcome.DUPLICATE and d.state is None

    def test_replay_refused_while_a_stage_runs(self):
        state = run_to("unit")
        d = decide(PIPELINE, state, replay(state, "lint"), T0)
        assert d.outcome is GateOutcome.REFUSED and "is running" in d.reason

    def test_replay_before_the_approval_requires_a_new_approval(self):
        state = run_to("prod-deploy")
        stopped = go(state, finished(state, "prod-deploy", Outcome.FAILED), T0)
        d = go(stopped, replay(stopped, "staging-smoke"), T0)
        assert d.stages["approval"].status is StageStatus.PENDING and d.approval == {}
        after_smoke = go(d, finished(d, "staging-smoke"), T0)
        assert after_smoke.status is ReleaseStatus.AWAITING_APPROVAL
        assert after_smoke.stages["approval"].attempt == 2

    def test_post_approval_replay_allowed_with_approval(self):
        state = run_to("prod-deploy")
        stopped = go(state, finished(state, "prod-deploy", Outcome.FAILED), T0)
        d = decide(PIPELINE, stopped, replay(stopped, "prod-deploy"), T0)
        assert starts(d) == ["prod-deploy"]


def test_changed_pipeline_definition_is_refused():
    state = run_to("lint")
    state.pipeline_digest = "other"
    assert decide(PIPELINE, state, finished(state, "lint"), T0).outcome is GateOutcome.REFUSED


def test_state_round_trips_through_dict():
    state = run_to("approval")
    assert ReleaseState.from_dict(state.to_dict()) == state


def test_replay_refused_while_an_earlier_stage_has_not_passed():
    """Found by the property test: replaying lint, failing it, then replaying chaos ran chaos out of order."""
    state = run_to("approval")
    state = go(state, chaos(state), T0)
    state = go(state, finished(state, "chaos"), T0)
    state = go(state, replay(state, "lint"), T0)
    state = go(state, finished(state, "lint", Outcome.FAILED), T0)
    d = decide(PIPELINE, state, replay(state, "chaos"), T0)
    assert d.outcome is GateOutcome.REFUSED and "stage 1 'lint' has not passed" in d.reason
    assert starts(d) == []


class TestEnvironmentLocks:
    def test_entering_staging_queues_until_the_lock_is_granted(self):
        state = run_to("staging-migrate")
        assert state.locks_held == ["staging"]
        stopped = decide(PIPELINE, state, finished(state, "staging-migrate", Outcome.FAILED), T0)
        assert ReleaseLock(state.release_id, "staging") in stopped.commands
        assert stopped.state.locks_held == []

    def test_grant_for_a_release_not_waiting_is_given_back(self):
        state = run_to("lint")
        d = decide(PIPELINE, state, granted(state, "staging"), T0)
        assert d.state is None and d.commands == (ReleaseLock(state.release_id, "staging"),)

    def test_tick_while_queued_asks_for_the_lock_again(self):
        state = run_to("unit")
        queued = decide(PIPELINE, state, finished(state, "unit"), T0).state
        assert queued.status is ReleaseStatus.QUEUED
        d = decide(PIPELINE, queued, tick(queued), T0 + 60)
        assert d.state is None and d.commands == (AcquireLock(state.release_id, "staging", state.created_at),)

    def test_superseded_while_queued_is_terminal(self):
        state = run_to("unit")
        queued = decide(PIPELINE, state, finished(state, "unit"), T0).state
        event = Superseded("s1", state.release_id, "staging", "newer-release")
        d = decide(PIPELINE, queued, event, T0)
        assert d.state.status is ReleaseStatus.SUPERSEDED and "superseded by release newer-release" in d.state.reason
        assert decide(PIPELINE, d.state, granted(d.state, "staging"), T0).outcome is GateOutcome.TERMINAL
        (notice,) = [c for c in d.commands if isinstance(c, Notify)]
        subject, text = format_notice(d.state, notice)
        # Announced as superseded, not as a stopped stage with a replay hint the gate would refuse.
        assert notice.kind is NoticeKind.SUPERSEDED and subject.startswith(f"Release {state.release_id} superseded")
        assert "replay" not in notice.message and "stopped at" not in subject and "this one is not replayed" in text

    def test_superseded_is_ignored_once_running(self):
        state = run_to("staging-migrate")
        d = decide(PIPELINE, state, Superseded("s2", state.release_id, "staging", "newer"), T0)
        assert d.outcome is GateOutcome.IGNORED and d.state is None

    def test_replay_refused_while_queued(self):
        state = run_to("unit")
        queued = decide(PIPELINE, state, finished(state, "unit"), T0).state
        d = decide(PIPELINE, queued, replay(queued, "lint"), T0)
        assert d.outcome is GateOutcome.REFUSED and "queued for staging" in d.reason


def test_failed_smoke_rolls_back_the_deploy_it_checked():
    state = run_to("staging-smoke")
    d = decide(PIPELINE, state, finished(state, "staging-smoke", Outcome.FAILED, "/health/liveliness: 500"), T0)
    (rollback,) = [c for c in d.commands if isinstance(c, RollBack)]
    assert rollback.stage == "staging-deploy" and rollback.services == ("web",)
    assert rollback.stage_run_id == state.stages["staging-deploy"].stage_run_id
    assert d.state.status is ReleaseStatus.STOPPED


def test_failed_build_rolls_nothing_back():
    state = run_to("unit")
    d = decide(PIPELINE, state, finished(state, "unit", Outcome.FAILED), T0)
    assert not [c for c in d.commands if isinstance(c, RollBack)]


def test_failed_chaos_blocks_a_replayed_approval():
    """Found by the property test: chaos failed, the approval was replayed and granted, prod started."""
    state = run_to("approval")
    state = go(state, chaos(state))
    state = go(state, finished(state, "chaos", Outcome.FAILED, "error rate 9 %"))
    d = decide(PIPELINE, state, replay(state, "approval"), T0)
    assert d.outcome is GateOutcome.REFUSED and "stage 5a 'chaos' has not passed" in d.reason
    again = go(state, replay(state, "chaos"))
    passed = go(again, finished(again, "chaos"))
    assert passed.status is ReleaseStatus.AWAITING_APPROVAL


def test_approval_request_binds_the_digest_the_build_reported():
    state = run_to("staging-smoke")
    state.stages["unit"].result["digest"] = "sha256:" + "b" * 64  # as a build's images or step output report it
    d = decide(PIPELINE, state, finished(state, "staging-smoke"), T0)
    (request,) = [c for c in d.commands if isinstance(c, RequestApproval)]
    assert request.digest == "sha256:" + "b" * 64
