"""The dispatcher on the fakes: the outbox, its lease, recovery after a crash between the
two writes, and a duplicate that arrives while the first delivery is still carrying out."""
from __future__ import annotations

import typing

import pytest

from shared.app.config import Settings
from shared.adapters.cloud_build_notification import decode_message
from shared.app.dispatcher import COMMAND_HANDLERS, IN_FLIGHT_WAIT_S, Dispatcher
from shared.domain.commands import Command, command_from_dict
from shared.app.locks import EnvironmentLocks
from shared.app.ports import StageFinish
from shared.domain.errors import ExecutorError, TransientError
from shared.domain.events import LockGranted, Outcome, ReleaseStarted, StageFinished, Tick
from shared.domain.gate import GateOutcome
from shared.domain.state import StageStatus, new_release
from shared.testing.fakes import (
    FakeApprovals,
    FakeClock,
    FakeDeadLetters,
    FakeExecutor,
    FakeNotifier,
    FakeOperatorRequests,
    FakePublisher,
    FakeStore,
    FakeTime,
    InMemoryAppRecords,
    in_memory_service_lock_records,
    rig_keyring,
    signed,
    signing,
)
from tests.unit.gate_helpers import PIPELINE, PUSHER, T0

SETTINGS = Settings(outbox_lease_s=60)


class Crash(BaseException):
    """The process dies: nothing after this point runs (not an Exception, so nobody catches it)."""


def make(executor: FakeExecutor | None = None) -> Dispatcher:
    store, publisher, clock = FakeStore(), signing(FakePublisher()), FakeClock(T0)
    ticks = FakeTime()
    executor = executor or FakeExecutor()
    return Dispatcher(store, publisher, {kind: executor for kind in ("build", "job", "deploy", "traffic", "check")},
                      FakeApprovals(), FakeNotifier(), clock, SETTINGS,
                      EnvironmentLocks(InMemoryAppRecords(), publisher, SETTINGS, in_memory_service_lock_records()), FakeDeadLetters(),
                      roll_back=lambda service, to=None: {"service": service, "revision": to}, operator_requests=FakeOperatorRequests(),
                      sleep=ticks.sleep, monotonic=ticks.monotonic, completion_keys=rig_keyring(),
                      decode=decode_message)


def started(dispatcher: Dispatcher) -> str:
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="a" * 40, version="1.2.3",
                        pushed_by=PUSHER, now=T0)
    dispatcher.store.save_pipeline(PIPELINE)
    assert dispatcher.store.create(state)
    return state.release_id


def state_of(dispatcher: Dispatcher, release_id: str):
    return dispatcher.store.get(release_id)[0]


def test_a_transition_writes_state_and_outbox_once_then_removes_the_carried_out_batch():
    dispatcher = make()
    rid = started(dispatcher)
    decision = dispatcher.handle(ReleaseStarted("e1", rid))
    assert decision.outcome is GateOutcome.APPLIED
    assert (dispatcher.store.reads, dispatcher.store.writes) == (1, 3)  # create, then state + outbox, batch removal
    state = state_of(dispatcher, rid)
    assert state.outbox == [] and state.stages["lint"].status is StageStatus.RUNNING
    assert state.stages["lint"].result["fake_run"] == f"{rid}.lint.a1", "the executor's handle is recorded"
    assert dispatcher.executors["build"].starts == {f"{rid}.lint.a1": 1}


def crashed_after_the_state_write(executor: FakeExecutor) -> tuple[Dispatcher, str]:
    """The first delivery wrote state + outbox, then died inside the executor's start."""
    def die(command):
        raise Crash()

    executor.hook = die
    dispatcher = make(executor)
    rid = started(dispatcher)
    with pytest.raises(Crash):
        dispatcher.handle(ReleaseStarted("e1", rid))
    executor.hook = None
    return dispatcher, rid


def test_after_a_crash_between_the_two_writes_the_batch_stays_leased():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)
    state = state_of(dispatcher, rid)
    (batch,) = state.outbox
    assert batch["event_id"] == "e1" and batch["lease_until"] == T0 + SETTINGS.outbox_lease_s
    assert [c["command"] for c in batch["commands"]] == ["start_stage"]
    assert state.stages["lint"].status is StageStatus.RUNNING and "fake_run" not in state.stages["lint"].result


def test_a_duplicate_while_the_batch_is_in_flight_waits_then_asks_for_redelivery():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)
    before = dispatcher.monotonic()
    with pytest.raises(TransientError, match="still in flight"):
        dispatcher.handle(ReleaseStarted("e1", rid))  # the same message again, lease not run out
    assert dispatcher.monotonic() - before >= IN_FLIGHT_WAIT_S, "it waited for the first delivery first"
    assert executor.starts == {f"{rid}.lint.a1": 1}, "nothing carried out twice while leased"
    assert len(state_of(dispatcher, rid).outbox) == 1


def test_another_event_before_the_lease_runs_out_leaves_the_batch_to_its_owner():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)
    dispatcher.clock.advance(SETTINGS.outbox_lease_s - 1)
    dispatcher.handle(Tick("t1", rid))
    assert executor.starts == {f"{rid}.lint.a1": 1} and len(state_of(dispatcher, rid).outbox) == 1


@pytest.mark.parametrize("recovered_by", ["redelivery", "tick", "completion"])
def test_once_the_lease_runs_out_any_event_claims_the_batch_and_carries_it_out(recovered_by):
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)
    dispatcher.clock.advance(SETTINGS.outbox_lease_s)
    event = {"redelivery": ReleaseStarted("e1", rid), "tick": Tick("t1", rid),
             "completion": signed(StageFinished("f0", rid, "lint", f"{rid}.lint.a0", Outcome.SUCCEEDED))}[recovered_by]
    dispatcher.handle(event)
    state = state_of(dispatcher, rid)
    assert state.outbox == []
    assert state.stages["lint"].result["fake_run"] == f"{rid}.lint.a1"
    # Started again with the same stage-run id: the real executors find the first build by it.
    assert executor.starts == {f"{rid}.lint.a1": 2}


def test_the_handler_that_wrote_the_batch_starts_without_a_lookup_a_recovered_batch_looks_first():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)  # died after creating the build
    (stored,) = state_of(dispatcher, rid).outbox[0]["commands"]
    assert "known_new" not in stored, "the batch as stored does not say its starts are new"
    assert command_from_dict({**stored, "known_new": True}).known_new is False, "nor is a stored claim believed"
    dispatcher.clock.advance(SETTINGS.outbox_lease_s)
    dispatcher.handle(Tick("t1", rid))
    assert [c.known_new for c in executor.commands] == [True, False]
    assert executor.created == {f"{rid}.lint.a1": 1}, "the recovered start found the dead handler's build"


def test_a_handler_slower_than_half_its_lease_looks_before_it_starts():
    """It may have been taken over meanwhile (the lease is by the clock of whoever reads it)."""
    executor = FakeExecutor()
    dispatcher = make(executor)
    clock = dispatcher.clock

    class SlowWrites(FakeStore):
        def update(self, state, token):
            clock.advance(SETTINGS.outbox_lease_s / 2)
            return super().update(state, token)

    dispatcher.store = SlowWrites()
    rid = started(dispatcher)
    dispatcher.handle(ReleaseStarted("e1", rid))
    assert [c.known_new for c in executor.commands] == [False]


def test_of_two_handlers_that_find_the_same_expired_batch_only_one_claims_it():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)
    dispatcher.clock.advance(SETTINGS.outbox_lease_s)
    first, token = dispatcher.store.get(rid)
    second, stale = dispatcher.store.get(rid)
    dispatcher._recover(PIPELINE, first, token, "t1")
    dispatcher._recover(PIPELINE, second, stale, "t2")  # its claim is a conditional write that fails
    assert executor.starts == {f"{rid}.lint.a1": 2} and state_of(dispatcher, rid).outbox == []


def test_a_completion_for_the_running_stage_moves_on_and_a_duplicate_of_it_changes_nothing():
    dispatcher = make()
    rid = started(dispatcher)
    dispatcher.handle(ReleaseStarted("e1", rid))
    finished = signed(StageFinished("f1", rid, "lint", f"{rid}.lint.a1", Outcome.SUCCEEDED))
    assert dispatcher.handle(finished).outcome is GateOutcome.APPLIED
    writes = dispatcher.store.writes
    assert dispatcher.handle(finished).outcome is GateOutcome.DUPLICATE
    assert dispatcher.store.writes == writes
    assert dispatcher.executors["build"].starts == {f"{rid}.lint.a1": 1, f"{rid}.unit.a1": 1}


class RefusingScheduler:
    """Cloud Tasks refusing the probe (the adapter raises ExecutorError, as for PERMISSION_DENIED)."""

    def schedule(self, task, at):
        raise ExecutorError("scheduling probe: missing permission cloudtasks.tasks.create", release_id=task.release_id,
                            stage=task.stage)


def test_a_refused_probe_fails_the_stage_it_would_follow_naming_why():
    dispatcher = make()
    dispatcher.probes = RefusingScheduler()
    rid = started(dispatcher)
    dispatcher.handle(ReleaseStarted("e1", rid))
    dispatcher.handle(signed(StageFinished("f1", rid, "lint", f"{rid}.lint.a1", Outcome.SUCCEEDED)))
    dispatcher.handle(signed(StageFinished("f2", rid, "unit", f"{rid}.unit.a1", Outcome.SUCCEEDED)))
    (grant,) = [data for _, data, _ in dispatcher.publisher.messages if data.get("type") == "lock.granted"]
    dispatcher.handle(LockGranted("g1", rid, grant["environment"]))
    assert dispatcher.executors["job"].starts[f"{rid}.staging-migrate.a1"] == 1  # started, then not followable
    (failed,) = [data for topic, data, _ in dispatcher.publisher.messages
                 if data.get("type") == "stage.finished" and data.get("stage") == "staging-migrate"]
    assert failed["outcome"] == "failed"
    assert "cannot be followed" in failed["reason"] and "cloudtasks.tasks.create" in failed["reason"]
# -- what is believed of a completion ---------------------------------------------------

def running_lint(executor: FakeExecutor | None = None) -> tuple[Dispatcher, str]:
    dispatcher = make(executor)
    rid = started(dispatcher)
    dispatcher.handle(ReleaseStarted("e1", rid))
    return dispatcher, rid


@pytest.mark.parametrize("forge", ["unsigned", "other key"])
def test_a_completion_our_functions_did_not_sign_is_dead_lettered_and_changes_nothing(forge):
    dispatcher, rid = running_lint()
    claim = StageFinished("f1", rid, "lint", f"{rid}.lint.a1", Outcome.SUCCEEDED, "", {"tests": 1000})
    if forge == "other key":
        from shared.domain.approval_tokens import Keyring
        from shared.domain.completions import sign_finish

        claim = sign_finish(claim, Keyring.from_setting("kt:someone-elses-key-of-32-bytes!!"))
    decision = dispatcher.handle(claim)
    assert decision.outcome is GateOutcome.REFUSED
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.RUNNING
    (letter,) = dispatcher.dead_letters.list()
    assert letter.id == "f1" and "stage.finished refused" in letter.reason


def build_notification(rid: str, status: str, build_id: str = "b-1") -> tuple[dict, bytes]:
    import json

    build = {"id": build_id, "status": status, "tags": [f"run-{rid}.lint.a1"]}
    return {"buildId": build_id, "status": status}, json.dumps(build).encode()


def with_recorded_build(dispatcher: Dispatcher, rid: str, build_id: str = "b-1") -> None:
    state, token = dispatcher.store.get(rid)
    state.stages["lint"].result["build_id"] = build_id
    dispatcher.store.update(state, token)


@pytest.mark.parametrize("says, build_is", [("SUCCESS", None), ("SUCCESS", Outcome.FAILED), ("FAILURE", Outcome.SUCCEEDED)])
def test_a_build_notification_that_cloud_build_does_not_confirm_is_refused(says, build_is):
    """Cloud Build's notifications carry no signature: the build executor's own read of the
    recorded build decides, so a notification copied from the tags says nothing by itself."""
    executor = FakeExecutor()
    dispatcher, rid = running_lint(executor)
    with_recorded_build(dispatcher, rid)
    if build_is is not None:
        executor.poll_results[f"{rid}.lint.a1"] = StageFinish(build_is, "", {"build_id": "b-1"})
    decision = dispatcher.handle_message("n1", *build_notification(rid, says))
    assert decision.outcome is GateOutcome.REFUSED
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.RUNNING


def test_a_confirmed_build_notification_applies_what_cloud_build_says():
    executor = FakeExecutor()
    dispatcher, rid = running_lint(executor)
    with_recorded_build(dispatcher, rid)
    executor.poll_results[f"{rid}.lint.a1"] = StageFinish(Outcome.SUCCEEDED, "", {"build_id": "b-1", "tests": 7})
    assert dispatcher.handle_message("n1", *build_notification(rid, "SUCCESS")).outcome is GateOutcome.APPLIED
    lint = state_of(dispatcher, rid).stages["lint"]
    assert lint.status is StageStatus.SUCCEEDED and lint.result["tests"] == 7


def test_a_notification_before_its_start_is_recorded_waits_for_that_write_and_applies():
    """A build that ends at once is notified while the handler that started it has not yet
    recorded its id (its batch is in the outbox): the notification waits for that second
    write instead of going stale, which would leave the stage to the sweeper's next poll."""
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)  # the starting handler is still at work

    def starting_handler_records_its_build(_seconds):
        state, token = dispatcher.store.get(rid)
        state.outbox, state.stages["lint"].result["build_id"] = [], "b-1"
        dispatcher.store.update(state, token)

    dispatcher.sleep = starting_handler_records_its_build
    executor.poll_results[f"{rid}.lint.a1"] = StageFinish(Outcome.SUCCEEDED, "", {"build_id": "b-1"})
    decision = dispatcher.handle_message("n1", *build_notification(rid, "SUCCESS"))
    assert decision.outcome is GateOutcome.APPLIED, decision.reason
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.SUCCEEDED


def test_a_notification_whose_start_stays_unrecorded_is_retried_not_called_stale():
    executor = FakeExecutor()
    dispatcher, rid = crashed_after_the_state_write(executor)  # lease not run out: its handler may still write
    with pytest.raises(TransientError, match="still in flight"):
        dispatcher.handle_message("n1", *build_notification(rid, "SUCCESS"))
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.RUNNING


def test_a_notification_of_another_build_is_stale_without_reading_any_build():
    executor = FakeExecutor()
    dispatcher, rid = running_lint(executor)
    with_recorded_build(dispatcher, rid)
    executor.poll_results[f"{rid}.lint.a1"] = StageFinish(Outcome.SUCCEEDED, "", {"build_id": "b-1"})
    decision = dispatcher.handle_message("n1", *build_notification(rid, "SUCCESS", build_id="b-copy"))
    assert decision.outcome is GateOutcome.STALE
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.RUNNING


def test_every_command_type_is_carried_out_through_the_table():
    """A command type the gate can emit but the table lacks would fail its batch (KeyError), not vanish."""
    assert set(typing.get_args(Command)) == set(COMMAND_HANDLERS)


def test_github_down_holds_no_release_and_its_reports_follow_once_it_is_back():
    from shared.app.github_reporting import GitHubReporting
    from shared.testing.fakes import FakeGitHub, FakeGitHubLedger

    dispatcher = make()
    github, ledger = FakeGitHub(), FakeGitHubLedger()
    dispatcher.reporting = GitHubReporting(github, ledger, dispatcher.clock)
    github.down = True
    rid = started(dispatcher)
    assert dispatcher.handle(ReleaseStarted("e1", rid)).outcome is GateOutcome.APPLIED
    assert state_of(dispatcher, rid).stages["lint"].status is StageStatus.RUNNING  # the release moved on
    assert "502" in ledger.get(rid)["last_error"] and github.commit_statuses == []
    github.down = False
    dispatcher.clock.advance(5)
    assert dispatcher.reporting.retry_due(dispatcher.store) == 1
    assert [s["state"] for s in github.commit_statuses] == ["pending"]
    dispatcher.handle(ReleaseStarted("e1", rid))  # redelivered: nothing twice
    assert len(github.commit_statuses) == 1 and ledger.get(rid)["last_error"] == ""


def test_a_redelivered_event_sends_what_a_crash_after_the_write_left_unreported():
    from shared.app.github_reporting import GitHubReporting
    from shared.testing.fakes import FakeGitHub, FakeGitHubLedger

    dispatcher = make()
    rid = started(dispatcher)
    dispatcher.handle(ReleaseStarted("e1", rid))  # no reporting wired yet: as if the process died before it
    github = FakeGitHub()
    dispatcher.reporting = GitHubReporting(github, FakeGitHubLedger(), dispatcher.clock)
    assert dispatcher.handle(ReleaseStarted("e1", rid)).outcome is not GateOutcome.APPLIED  # the redelivery
    assert [s["state"] for s in github.commit_statuses] == ["pending"]
