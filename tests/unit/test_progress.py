"""Progress: elapsed times, the expected end from per-stage medians, the stall flag. No clock, no I/O."""
from __future__ import annotations

from shared.domain.commands import RecordDurations, command_from_dict, command_to_dict
from shared.domain.gate import decide
from shared.domain.progress import COUNTED_KEY, KEPT, add_durations, progress, succeeded_durations
from tests.unit.gate_helpers import PIPELINE, STAGES, T0, approval, finished, run_to, settle


def test_medians_count_each_release_once_and_keep_the_last_ones():
    medians = {}
    for n, seconds in enumerate([10, 30, 20, 1000]):
        medians = add_durations(medians, f"r{n}", {"lint": seconds})
    assert medians["lint"]["median_s"] == 25.0 and medians["lint"]["recent"] == [10, 30, 20, 1000]
    assert add_durations(medians, "r1", {"lint": 5}) == medians  # the same release again: nothing
    for n in range(KEPT + 5):
        medians = add_durations(medians, f"s{n}", {"lint": 7})
    assert len(medians["lint"]["recent"]) == KEPT and medians["lint"]["median_s"] == 7
    assert len(medians[COUNTED_KEY]) == KEPT


def test_expected_end_adds_the_medians_of_what_is_left_and_says_the_approval_is_not_estimated():
    medians = add_durations({}, "old", {s: 10.0 for s in STAGES if s != "approval"})
    state = run_to("unit")  # started at T0 (run_to runs everything at T0)
    p = progress(state, PIPELINE, medians, T0 + 4)
    assert (p["stage"], p["stage_status"], p["stage_elapsed_s"], p["release_elapsed_s"]) == ("unit", "running", 4, 4)
    later = [s for s in STAGES[STAGES.index("unit") + 1:] if s not in ("approval", "chaos")]
    assert p["remaining_s"] == 6 + 10 * len(later) and p["eta_at"] == T0 + 4 + p["remaining_s"]
    assert p["waits_for_human"] is True and p["stalled_s"] is None


def test_no_history_gives_no_estimate_and_a_quiet_release_is_flagged_after_its_timeout():
    state = run_to("unit")
    timeout = PIPELINE.stage("unit").timeout_s
    assert progress(state, PIPELINE, {}, T0 + 1)["remaining_s"] is None
    p = progress(state, PIPELINE, {}, T0 + timeout + 30)
    assert p["stalled_s"] == timeout + 30 and p["timeout_s"] == timeout


def test_a_succeeded_release_records_its_durations_once():
    state = run_to("traffic-100", now=T0)
    decision = decide(PIPELINE, state, finished(state, "traffic-100"), T0 + 50)
    (record,) = [c for c in decision.commands if isinstance(c, RecordDurations)]
    assert record.durations == succeeded_durations(decision.state, PIPELINE)
    assert record.durations["traffic-100"] == 50 and "approval" not in record.durations
    assert command_from_dict(command_to_dict(record)) == record
    assert progress(decision.state, PIPELINE, {}, T0 + 99)["stage"] == ""


def test_an_approval_in_progress_is_a_human_wait():
    state = run_to("approval")
    p = progress(state, PIPELINE, add_durations({}, "old", {s: 1.0 for s in STAGES}), T0 + 60)
    assert p["stage"] == "approval" and p["waits_for_human"] and p["remaining_s"] == len(STAGES[STAGES.index("approval") + 1:])
    state = settle(decide(PIPELINE, state, approval(state), T0 + 61).state, T0 + 61)
    assert progress(state, PIPELINE, {}, T0 + 62)["stage"] == "prod-migrate"


def test_a_stopped_release_took_until_its_stage_failed_and_the_time_stops_there():
    """Issue 26: the "took" of a stopped release kept growing while it waited for a replay."""
    from shared.domain.events import Outcome

    state = run_to("unit")
    state = decide(PIPELINE, state, finished(state, "unit", Outcome.FAILED, "3 tests failed"), T0 + 42).state
    assert state.status.value == "stopped"
    for later in (T0 + 60, T0 + 86_400):
        p = progress(state, PIPELINE, {}, later)
        assert (p["stage"], p["release_elapsed_s"]) == ("", 42)
