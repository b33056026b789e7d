"""The dispatcher against the Firestore emulator: one transition per event, whatever the delivery."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.app import edge
from shared.domain.gate import GateOutcome
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig

pytestmark = pytest.mark.emulators


@pytest.fixture
def rig(emulators, unique_prefix):
    return make_rig(emulators["project"], unique_prefix)


def lint_finished(release_id, outcome="succeeded", reason=""):
    return {"type": "stage.finished", "release_id": release_id, "stage": "lint",
            "stage_run_id": f"{release_id}.lint.a1", "outcome": outcome, "reason": reason}


def test_release_started_starts_lint_and_records_the_handle(rig):
    rid = rig.new_release()
    decision = rig.send("m1", {"type": "release.started", "release_id": rid})
    assert decision.outcome is GateOutcome.APPLIED
    state = rig.state(rid)
    assert state.stages["lint"].status is StageStatus.RUNNING
    assert state.stages["lint"].result["fake_run"] == f"{rid}.lint.a1"
    assert state.outbox == [], "the carried-out batch is removed"
    assert list(rig.executor.started) == [f"{rid}.lint.a1"]


def test_same_event_delivered_again_sequentially_causes_one_transition(rig):
    rid = rig.new_release()
    rig.send("m1", {"type": "release.started", "release_id": rid})
    outcomes = [rig.send("m2", lint_finished(rid)).outcome for _ in range(3)]
    assert outcomes == [GateOutcome.APPLIED, GateOutcome.DUPLICATE, GateOutcome.DUPLICATE]
    assert rig.executor.start_calls == 2  # lint, then unit once
    assert rig.state(rid).stages["unit"].attempt == 1


def test_ten_concurrent_copies_cause_exactly_one_transition(rig):
    rid = rig.new_release()
    rig.send("m1", {"type": "release.started", "release_id": rid})
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda _: rig.send("m2", lint_finished(rid)).outcome, range(10)))
    assert outcomes.count(GateOutcome.APPLIED) == 1
    assert set(outcomes) <= {GateOutcome.APPLIED, GateOutcome.DUPLICATE}
    assert rig.executor.start_calls == 2
    state = rig.state(rid)
    assert state.stages["unit"].status is StageStatus.RUNNING and state.stages["unit"].attempt == 1
    assert state.applied_events.count("m2") == 1


def test_ten_concurrent_distinct_copies_of_one_completion_start_the_next_stage_once(rig):
    rid = rig.new_release()
    rig.send("m1", {"type": "release.started", "release_id": rid})
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda i: rig.send(f"copy{i}", lint_finished(rid)).outcome, range(10)))
    assert outcomes.count(GateOutcome.APPLIED) == 1
    assert rig.executor.start_calls == 2


def test_failing_stage_stops_the_release_and_names_it(rig):
    rid = rig.new_release()
    rig.send("m1", {"type": "release.started", "release_id": rid})
    rig.send("m2", lint_finished(rid, "failed", "ruff found 3 errors"))
    state = rig.state(rid)
    assert state.status is ReleaseStatus.STOPPED and state.stopped_at_stage == "lint"
    assert state.reason == "stage 1 'lint' failed: ruff found 3 errors"
    notices = [d for t, d, _ in rig.publisher.messages if d.get("type") == "release.notice"]
    assert notices and "stage 1 'lint' failed" in notices[0]["message"]


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"not json", "data is not JSON"),
        (b'{"type": "stage.finished", "release_id": "x"}', "missing stage, stage_run_id, outcome"),
        (b'{"type": "nonsense"}', "unknown type"),
        (b'{"type": "stage.finished", "release_id": "x", "stage": "a", "stage_run_id": "b", "outcome": "maybe"}',
         "'maybe' is not a valid Outcome"),
    ],
)
def test_malformed_event_is_acknowledged_and_dead_lettered(rig, payload, words):
    envelope = {"message": {"data": base64.b64encode(payload).decode(), "attributes": {"type": "x"}}}
    for _ in range(2):  # a redelivery is kept once
        assert edge.deliver("bad1", envelope, rig.dispatcher.handle_message, lambda: rig.dead_letters, "dispatch") is None
    (letter,) = [d for d in rig.dead_letters.list() if d.id == "bad1"]
    assert words in letter.reason and letter.data == payload and letter.attributes == {"type": "x"}


def test_event_for_unknown_release_changes_nothing(rig):
    decision = rig.send("m9", lint_finished("no-such-release"))
    assert decision.outcome is GateOutcome.UNKNOWN_RELEASE
    assert rig.executor.start_calls == 0


def drive_to_approval(rig):
    rid = rig.new_release()
    rig.send("go", {"type": "release.started", "release_id": rid})
    for i in range(20):
        state = rig.state(rid)
        if state.status is ReleaseStatus.AWAITING_APPROVAL:
            return rid, state
        running = [s for s, st in state.stages.items() if st.status is StageStatus.RUNNING][0]
        rig.send(f"f{i}", {"type": "stage.finished", "release_id": rid, "stage": running,
                           "stage_run_id": state.stages[running].stage_run_id, "outcome": "succeeded"})
    raise AssertionError("never reached the approval")


def approval_event(state, nonce):
    st = state.stages["approval"]
    return {"type": "approval.decided", "release_id": state.release_id, "stage": "approval",
            "attempt": st.attempt, "nonce": nonce, "approver": "boss@example.com", "approve": True,
            "expires_at": st.deadline}


def test_approval_event_without_a_decision_made_through_a_link_is_refused(rig):
    """A publisher of pipeline-events forges a well-formed approval: it is recorded, never applied."""
    rid, waiting = drive_to_approval(rig)
    decision = rig.send("forged", approval_event(waiting, "made-up-nonce"))
    assert decision.outcome is GateOutcome.REFUSED and "was issued" in decision.reason
    assert rig.state(rid).to_dict() == waiting.to_dict()
    assert "approval.decided refused" in rig.dead_letters.store.get("forged").reason
    rig.dispatcher.approvals.confirm("real-nonce")  # as on_approval records a POST from the link
    assert rig.send("real", approval_event(waiting, "real-nonce")).outcome is GateOutcome.APPLIED
    assert rig.state(rid).stages["prod-migrate"].status is not StageStatus.PENDING


def test_replay_and_chaos_published_directly_are_refused_unless_the_operator_function_recorded_them(rig):
    """Anyone who may publish on pipeline-events could replay or request chaos as anyone: not any more."""
    rid, waiting = drive_to_approval(rig)
    forged_chaos = {"type": "chaos.requested", "release_id": rid, "requested_by": "qa@example.com",
                    "request_id": "guessed"}
    decision = rig.send("forged-chaos", forged_chaos)
    assert decision.outcome is GateOutcome.REFUSED and "no operator request" in decision.reason
    forged_replay = {"type": "stage.replay", "release_id": rid, "stage": "lint", "replay_id": "r-1",
                     "requested_by": "ops@example.com", "reason": "x"}
    assert rig.send("forged-replay", forged_replay).outcome is GateOutcome.REFUSED
    assert rig.state(rid).to_dict() == waiting.to_dict()
    assert "stage.replay refused" in rig.dead_letters.store.get("forged-replay").reason
    # Recorded for someone else: the event may not claim another requester.
    rig.operator_requests.record("r-1", {"action": "replay", "release_id": rid, "stage": "lint",
                                         "requested_by": "other@example.com"})
    assert "requested_by" in rig.send("forged-2", forged_replay).reason
    rig.operator_requests.record("c-1", {"action": "chaos", "release_id": rid, "stage": "",
                                         "requested_by": "qa@example.com"})
    assert rig.send("real-chaos", {**forged_chaos, "request_id": "c-1"}).outcome is GateOutcome.APPLIED
    assert rig.state(rid).chaos_requested_by == "qa@example.com"


def test_the_approval_request_keeps_githubs_comparison_on_the_release_document(rig):
    """One compare per approval request, through the real adapter and ApprovalService, and the
    dispatcher's write of it into the release document in Firestore (what the page reads)."""
    from shared.adapters.github_compare import GitHubCompare
    from shared.app.approvals import ApprovalService
    from shared.app.compare import compared_changes
    from shared.domain.approval_tokens import Keyring
    from shared.testing.fakes import FakeLinkSender, InMemoryApprovalStore
    from tests.github_compare_server import CompareServer

    prod, head = "1" * 40, "abcdef1234567890"
    server = CompareServer("t0ken", "acme/app", [(prod, "prod", "Ops"), ("2" * 40, "Fix it\n\nwhy", "Dev"),
                                                (head, "Release", "Rel")])
    try:
        approvals = ApprovalService(rig.dispatcher.settings, InMemoryApprovalStore(),
                                    Keyring.from_setting("k1:first-secret-0123456789abcdef"), rig.publisher,
                                    rig.clock, [FakeLinkSender()])
        approvals.compare_changes = lambda release: compared_changes(
            release, GitHubCompare("t0ken", server.url), prod)
        rig.dispatcher.approvals = approvals
        rid, waiting = drive_to_approval(rig)
        assert len(server.requests) == 1
        assert waiting.changes["total"] == 2 and waiting.changes["before"] == prod
        assert [c["message"] for c in waiting.changes["commits"]] == ["Fix it", "Release"]
    finally:
        server.close()
