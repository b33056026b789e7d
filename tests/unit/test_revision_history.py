"""The revision history's rules, pure: which revision a rollback may go to, verdicts, moves.

Why (issue 24): rollbacks chose from what the releases' records implied (the automatic
rollback recorded the stable revision as "from", so a good revision looked failed and a
failed canary looked fine) and from Cloud Run's labels (the newest earlier revision, failed or
not). The history says per revision how it ended, and a rollback goes only where a release
completed."""
from __future__ import annotations

import pytest

from shared.app.revision_log import record_manual
from shared.domain.revision_history import (RevisionRecord, RollbackRefused, ServiceHistory, TrafficMove, Verdict,
                                            history_from_dict, history_to_dict, rollback_target, split_of)
from shared.testing.fakes import FakeRevisionHistories

T0 = 1_800_000_000.0


def history(*verdicts: tuple[str, Verdict]) -> ServiceHistory:
    h = ServiceHistory("web")
    for name, verdict in verdicts:
        h = h.with_revision(RevisionRecord(name, f"rel-{name}", "1.0.0", "abc1234")).with_verdict(name, verdict)
    return h


H = history(("web-1", Verdict.COMPLETED), ("web-2", Verdict.COMPLETED), ("web-3", Verdict.FAILED))


def test_a_plain_rollback_goes_to_the_newest_completed_revision_never_to_a_newer_failed_one():
    assert rollback_target(H, split_of([("web-2", 100)])).revision == "web-1"
    assert rollback_target(H, split_of([("web-2", 90), ("web-3", 10)])).revision == "web-2"


def test_a_named_revision_that_failed_a_canary_needs_force_and_a_reason():
    with pytest.raises(RollbackRefused, match="never completed a release \\(failed a canary\\).*--force"):
        rollback_target(H, split_of([("web-2", 100)]), "web-3")
    with pytest.raises(RollbackRefused, match="needs a reason"):
        rollback_target(H, split_of([("web-2", 100)]), "web-3", force=True)
    choice = rollback_target(H, split_of([("web-2", 100)]), "web-3", force=True, reason="hotfix lives there")
    assert (choice.revision, choice.forced) == ("web-3", True)


def test_a_named_revision_whose_release_completed_is_taken_without_force():
    choice = rollback_target(H, split_of([("web-2", 100)]), "web-1")
    assert (choice.revision, choice.forced) == ("web-1", False)


def test_a_rollback_that_changes_nothing_is_refused_as_a_no_op():
    with pytest.raises(RollbackRefused, match="already sends 100 % of its traffic to web-2; nothing to roll back"):
        rollback_target(H, split_of([("web-2", 100)]), "web-2", force=True, reason="x")
    with pytest.raises(RollbackRefused, match="no revision that completed a release"):
        rollback_target(history(("web-1", Verdict.COMPLETED)), split_of([("web-1", 100)]))


def test_a_completed_revision_stays_completed_and_a_decided_verdict_is_not_overwritten_by_another():
    h = H.with_verdict("web-1", Verdict.ROLLED_BACK).with_verdict("web-3", Verdict.ROLLED_BACK)
    assert h.revision("web-1").verdict is Verdict.COMPLETED and h.revision("web-3").verdict is Verdict.FAILED


def test_a_manual_move_records_before_and_after_and_rolls_back_a_pending_canary_only():
    histories = FakeRevisionHistories()
    histories.change("web", lambda h: history(("web-1", Verdict.COMPLETED), ("web-2", Verdict.PENDING)))
    moved = {"before": [{"revision": "web-2", "percent": 10}, {"revision": "web-1", "percent": 90}],
             "after": [{"revision": "web-1", "percent": 100}], "operation": "op-1"}
    h = record_manual(histories, "web", moved, by="ops@example.com", why="slow", request_id="r1", at=T0)
    assert h.revision("web-2").verdict is Verdict.ROLLED_BACK and h.revision("web-1").verdict is Verdict.COMPLETED
    (move,) = h.moves
    assert (move.before, move.after, move.by, move.kind, move.forced) == (
        (("web-1", 90), ("web-2", 10)), (("web-1", 100),), "ops@example.com", "manual", False)
    assert record_manual(histories, "web", moved, by="ops@example.com", why="slow", request_id="r1", at=T0) == h


def test_the_stored_form_round_trips():
    h = H.with_move(TrafficMove("m1", T0, "deploy", split_of([("web-2", 100)]), split_of([("web-3", 10), ("web-2", 90)]),
                                forced=True))
    assert history_from_dict(history_to_dict(h)) == h


def test_the_gates_rollback_goes_back_to_what_served_before_unless_the_history_knows_it_failed():
    from shared.domain.revision_history import automatic_target

    serving = split_of([("web-2", 90), ("web-4", 10)])
    assert automatic_target(H, serving, "web-2").revision == "web-2"
    assert automatic_target(H, serving, "web-0").revision == "web-0"  # older than the history: still back there
    assert automatic_target(H, serving, "web-3").revision == "web-2"  # it failed a canary: the last completed
    assert automatic_target(H, split_of([("web-4", 100)]), "").revision == "web-2"
