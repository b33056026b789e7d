"""The stall rule: stalled past the stage's timeout (plus the grace), announced once per stall. No clock, no I/O."""
from __future__ import annotations

import dataclasses

from shared.adapters.notify.messages import format_notice
from shared.domain.commands import NoticeKind
from shared.domain.events import Outcome
from shared.domain.gate import decide
from shared.domain.stall import ANNOUNCE_AFTER_S, stall, stall_notice, stall_to_announce
from shared.domain.state import ReleaseStatus
from shared.domain.wake import next_wake
from tests.unit.gate_helpers import PIPELINE, T0, finished, replay, run_to, tick

UNIT_TIMEOUT = PIPELINE.stage("unit").timeout_s


def test_a_release_that_moved_recently_is_not_stalled():
    state = run_to("unit")
    assert stall(state, PIPELINE, T0 + UNIT_TIMEOUT) is None
    assert stall_to_announce(state, PIPELINE, T0 + UNIT_TIMEOUT + ANNOUNCE_AFTER_S + 60) is not None


def test_the_stall_is_announced_only_after_the_grace_and_then_once():
    state = run_to("unit")
    late = T0 + UNIT_TIMEOUT + 1
    assert stall(state, PIPELINE, late) is not None  # shown as stalled at once ...
    assert stall_to_announce(state, PIPELINE, late) is None  # ... announced once the sweeper's tick had its turn
    found = stall_to_announce(state, PIPELINE, late + ANNOUNCE_AFTER_S)
    assert found is not None and found.stage == "unit" and found.status == "running"
    assert found.timeout_s == UNIT_TIMEOUT and found.idle_s == UNIT_TIMEOUT + 1 + ANNOUNCE_AFTER_S
    announced = dataclasses.replace(state, stall_announced_for=found.key)
    assert announced.updated_at == state.updated_at  # the marker does not move what the stall is measured from
    for later in (late + ANNOUNCE_AFTER_S + 60, late + 10 * 3600):
        assert stall(announced, PIPELINE, later) is not None  # still stalled, still shown
        assert stall_to_announce(announced, PIPELINE, later) is None  # but not announced again


def test_a_release_that_moves_and_stalls_again_is_announced_again():
    state = run_to("unit")
    first = stall_to_announce(state, PIPELINE, T0 + 2 * 3600)
    state.stall_announced_for = first.key
    stopped = decide(PIPELINE, state, tick(state), T0 + 2 * 3600 + 5).state  # the deadline enforced: it moved
    assert stopped.status is ReleaseStatus.STOPPED and stall_to_announce(stopped, PIPELINE, T0 + 5 * 3600) is None
    again = decide(PIPELINE, stopped, replay(stopped, "unit"), T0 + 3 * 3600).state  # replayed: running anew
    assert again.stall_announced_for == first.key  # the marker stays; the key it is compared with changed
    assert stall_to_announce(again, PIPELINE, T0 + 3 * 3600 + 10) is None
    second = stall_to_announce(again, PIPELINE, T0 + 4 * 3600)
    assert second is not None and second.stage == "unit" and second.key != first.key


def test_a_finished_or_stopped_release_never_stalls():
    state = run_to("unit")
    state.status = ReleaseStatus.SUCCEEDED
    assert stall_to_announce(state, PIPELINE, T0 + 10**6) is None
    state = run_to("unit")
    stopped = decide(PIPELINE, state, finished(state, "unit", Outcome.FAILED, "exit 1"), T0 + 1).state
    assert stopped.status is ReleaseStatus.STOPPED and stall_to_announce(stopped, PIPELINE, T0 + 10**6) is None


def test_every_release_that_can_stall_is_due_for_the_sweeper_by_then():
    """A stall can only be announced if the sweeper reads the release: wake_at must come no later."""
    for stage in ("lint", "staging-deploy", "approval", "prod-deploy"):
        state = run_to(stage)
        found_at = state.updated_at + PIPELINE.stage(stage).timeout_s + ANNOUNCE_AFTER_S + 1
        wake = next_wake(state, state.updated_at)
        assert wake is not None and wake <= found_at, stage
        assert next_wake(state, found_at) <= found_at, stage  # and it stays due while it is stalled


def test_the_notice_names_the_stage_the_wait_and_the_commands_to_run():
    state = run_to("unit")
    found = stall_to_announce(state, PIPELINE, T0 + 3600)
    notice = stall_notice(state, found)
    assert notice.kind is NoticeKind.STALLED and notice.stage == "unit"
    assert "has not moved for 60 min" in notice.message and "timeout of 10 min" in notice.message
    subject, text = format_notice(state, notice, "http://127.0.0.1:8090/")
    assert subject.startswith(f"Release {state.release_id} has not moved at stage unit")
    assert f"relctl show {state.release_id}" in text
    assert f'relctl cancel {state.release_id} --reason "stalled at unit"' in text
    assert f"Dashboard: http://127.0.0.1:8090/release/{state.release_id}" in text
