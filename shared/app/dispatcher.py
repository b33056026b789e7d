"""The dispatcher: read, decide, write once, then carry out.

Why the commands of a transition ride in the release document (the "outbox")
---------------------------------------------------------------------------
Pub/Sub delivers at least once and the process can die anywhere. The state write
and the side effects cannot share a transaction, so the new state is written
together with the commands it implies, each batch under a short lease. The
handler that wrote them carries them out and then removes them (second write).
If it dies in between, any later event for the release, or the redelivery of the
same event, finds the batch with an expired lease, claims it with a conditional
write and carries it out again. Executors are idempotent per stage-run id (they
look for the build, execution or revision tagged with it first), so a repeat
starts nothing twice; only the first carry-out, by the handler whose write made
the run id, may skip that lookup (StartStage.known_new). Cost per transition:
one read, two writes.
"""
from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from shared.domain.commands import (
    AcquireLock,
    Command,
    EndBakeEarly,
    FollowRollback,
    NoticeKind,
    Notify,
    RecordDurations,
    ReleaseLock,
    RequestApproval,
    RollBack,
    StartStage,
    command_from_dict,
    command_to_dict,
)
from shared.app.config import Settings
from shared.domain.bake_skip import skip_probe_task
from shared.domain.errors import DocumentTooLarge, ExecutorError, StaleWrite, TransientError
from shared.domain.events import (
    ApprovalDecided,
    BuildFinished,
    Event,
    LockGranted,
    Outcome,
    ReleaseNotice,
    StageFinished,
    StageReplay,
    Superseded,
)
from shared.domain.gate import Decision, GateOutcome, decide
from shared.domain.pipeline import Pipeline
from shared.app.operator import OPERATOR_EVENTS, unconfirmed_request
from shared.app.ports import (
    ApprovalRequester,
    Clock,
    DeadLetterStore,
    EventPublisher,
    Locks,
    MessageDecoder,
    Notifier,
    OperatorRequestLog,
    ProbeScheduler,
    ReleaseStore,
    RevisionHistories,
    StageExecutor,
)
from shared.app.revision_log import record_batch
from shared.app.probing import follow
from shared.domain.approval_tokens import Keyring
from shared.domain.completions import unsigned_reason
from shared.domain.dead_letters import DeadLetter
from shared.domain.probes import CHECK_KIND, ROLLBACK_FOLLOW_S, ROLLBACK_KIND
from shared.domain.stage_results import build_id_of
from shared.domain.wake import next_wake
from shared.domain.state import ReleaseState, StageStatus
from shared.domain.wire import decode_event, encode

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 10
IN_FLIGHT_WAIT_S = 2.0  # how long a duplicate waits for the original's side effects


@dataclass
class Dispatcher:
    store: ReleaseStore
    publisher: EventPublisher
    executors: Mapping[str, StageExecutor]
    approvals: ApprovalRequester
    notifier: Notifier
    clock: Clock
    settings: Settings
    locks: Locks
    dead_letters: DeadLetterStore
    # service name -> what was done; moves all traffic back to the revision before ours
    roll_back: Callable[[str, str | None], Mapping[str, Any]]
    # Operator requests recorded by the operator function; replay and chaos events must match one.
    operator_requests: OperatorRequestLog | None = None
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    # Schedules the probes that follow a started job, rollout, traffic change or check
    # (shared/app/probing.py). Without one, only the sweeper's tick notices completions
    # and a check cannot run at all.
    probes: ProbeScheduler | None = None
    # The link keys: a stage.finished on the events topic counts only when signed with one of
    # them (shared/domain/completions.py). None refuses every such completion (fails closed).
    completion_keys: Keyring | None = None
    # One revision history per Cloud Run service (shared/app/revision_log.py): what each batch
    # deployed, moved, rolled back, and the verdicts of ended releases. None records nothing.
    histories: RevisionHistories | None = None
    # GitHub deployments and commit statuses (shared/app/github_reporting.py), synced after each
    # written transition; None: nothing is reported.
    reporting: Any = None
    # Decodes each message once. The wire format's decoder knows only our own messages; the
    # composition root wires shared/adapters/cloud_build_notification.py's, which also parses
    # Cloud Build's notifications on ``cloud-builds`` into a BuildFinished.
    decode: MessageDecoder = decode_event

    # -- entry ----------------------------------------------------------------
    def handle_message(self, event_id: str, attributes: Mapping[str, str], data: bytes) -> Decision:
        """One Pub/Sub message. Raises MalformedEvent for one that cannot be decoded: whether
        that is acknowledged or retried is the edge's decision (shared/app/edge.py)."""
        event = self.decode(event_id, attributes, data)
        if event is None:
            return Decision(GateOutcome.IGNORED, "not a terminal status of a pipeline build")
        if isinstance(event, BuildFinished):
            # Cloud Build's own notification: unsigned by nature, so checked against the build itself.
            return self._confirm_build(event.finished)
        return self.handle(event)

    def handle(self, event: Event) -> Decision:
        """An event from the events topic: every claim it makes is checked before it is applied."""
        if isinstance(event, StageFinished):
            refused = unsigned_reason(event, self.completion_keys)
            if refused:  # not published by our functions: whoever sent it, it decides nothing
                return self._refuse_claim(event, refused)
        if isinstance(event, ApprovalDecided):
            refused = self.approvals.unconfirmed(event)
            if refused:
                # Not a decision made through a signed link: recorded and announced, never applied.
                return self._refuse_claim(event, refused)
        if type(event) in OPERATOR_EVENTS:
            refused = ("no operator request log is wired" if self.operator_requests is None
                       else unconfirmed_request(self.operator_requests, event))
            if refused:
                return self._refuse_claim(event, refused)
        return self._apply(event)

    def _confirm_build(self, event: StageFinished) -> Decision:
        """A build notification counts only as what Cloud Build says of the build the stage
        recorded: the build executor's own read of that build decides the outcome and the
        result. A notification for another run or build goes to the gate unread, which finds
        it stale (the poll decides those later).

        A build that ends at once can be notified before the handler that started it has
        recorded its id (its second write): that handler's batch is still in the outbox. The
        notification then waits for that write (``_wait_for_batch``, bounded; a retry after)
        instead of going stale, which would leave the stage to the sweeper's poll a minute later."""
        got = self.store.get(event.release_id)
        if got is None:
            return self._unknown_release(event)
        batch_id = _batch_starting(got[0], event.stage_run_id, self.clock.now())
        if batch_id:
            self._wait_for_batch(event.release_id, batch_id, poll_s=0.01)  # one write away: look often
            got = self.store.get(event.release_id)
            if got is None:
                return self._unknown_release(event)
        state, _ = got
        st = state.stages.get(event.stage)
        recorded = build_id_of(st.result) if st is not None else None
        if (st is None or st.status is not StageStatus.RUNNING or not recorded or recorded != build_id_of(event.result)
                or not hmac.compare_digest(st.stage_run_id.encode(), event.stage_run_id.encode())):
            return self._apply(event, got)
        pipeline = self.store.load_pipeline(state.pipeline_digest)
        stage = pipeline.stage(event.stage)
        try:
            finish = self.executors[stage.kind.value].poll(pipeline, stage, st)
        except ExecutorError as exc:  # unconfirmed, not forged: the sweeper's poll or the timeout decides
            log.warning("notification of build %s not confirmed: %s", recorded, exc)
            return Decision(GateOutcome.STALE, f"could not read build {recorded} to confirm its notification: {exc}")
        if finish is None:
            return self._refuse_claim(event, f"build {recorded} has not finished, whatever the notification says")
        if finish.outcome is not event.outcome:
            return self._refuse_claim(event, f"the notification says build {recorded} {event.outcome.value}; "
                                             f"Cloud Build says {finish.outcome.value}")
        return self._apply(StageFinished(event.id, event.release_id, event.stage, event.stage_run_id, finish.outcome,
                                         finish.reason, {**dict(finish.result), "build_id": recorded}), got)

    def _apply(self, event: Event, got: tuple[ReleaseState, Any] | None = None) -> Decision:
        """Read, decide, write (conditionally), carry out. ``got``: the release as the caller just
        read it, decided on without reading it again (a stale write reads it afresh)."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            if attempt or got is None:
                got = self.store.get(event.release_id)
            if got is None:
                return self._unknown_release(event)
            state, token = got
            if isinstance(event, (LockGranted, Superseded)):
                refused = self.locks.confirms(state.pipeline_name, event)
                if refused:  # not what the application's record says: a forged or stale claim
                    return self._refuse_claim(event, refused)
            pipeline = self.store.load_pipeline(state.pipeline_digest)  # the store caches it
            now = self.clock.now()
            decision = decide(pipeline, state, event, now)
            if decision.state is None:
                if decision.commands:  # idempotent ones (lock requests): nothing to record first
                    self._execute(pipeline, state, decision.commands)
                self._recover(pipeline, state, token, event.id)
                if self.reporting is not None:  # a redelivery after a crash before the report: one read
                    self.reporting.sync(pipeline, state)
                return decision
            new = decision.state
            if decision.commands:
                new.outbox.append(
                    {
                        "event_id": event.id,
                        "commands": [command_to_dict(c) for c in decision.commands],
                        "lease_until": now + self._lease_s,
                    }
                )
                new.wake_at = next_wake(new, now, new.outbox)  # the sweeper recovers a batch whose handler died
            try:
                token = self.store.update(new, token)
            except StaleWrite:
                continue  # someone else moved the release: read again and re-decide
            except DocumentTooLarge as exc:
                return self._stop_oversized(state, token, exc)
            log.info("%s %s: %s", event.type.value, decision.outcome.value, decision.reason)
            if decision.commands:
                self._carry_out(pipeline, new, token, event.id, decision.commands,
                                new_runs_until=now + self._lease_s / 2)
            if self.reporting is not None:  # after the write and the commands: it never holds the release
                self.reporting.sync(pipeline, new)
            return decision
        raise TransientError("too many concurrent updates; retry", release_id=event.release_id)

    def _stop_oversized(self, state: ReleaseState, token: Any, exc: DocumentTooLarge) -> Decision:
        """The new state does not fit in one document: stop the release with a small write that
        says why, give back every lock it holds or waits for, and tell people. Nothing of the
        refused transition is carried out; batches of earlier transitions still in the outbox stay
        there (a rollback among them must still happen) and are recovered as usual."""
        reason = (f"the release document would pass Firestore's 1 MiB limit ({exc}); the release stops "
                  "and gives back its locks")
        active = [sid for sid, st in state.stages.items() if st.status.value in ("running", "waiting", "queued")]
        fields: dict[tuple[str, ...], Any] = {
            ("status",): "stopped", ("reason",): reason, ("locks_held",): [], ("waiting_for",): "",
            ("stopped_at_stage",): active[0] if active else state.stopped_at_stage}
        for sid in active:
            fields[("stages", sid, "status")] = "failed"
            fields[("stages", sid, "reason")] = reason
        try:
            self.store.update_fields(state.release_id, fields, token)
        except StaleWrite:
            raise TransientError("the release moved while it was being stopped for size; retry",
                                 release_id=state.release_id) from None
        for env in dict.fromkeys([*state.locks_held, *([state.waiting_for] if state.waiting_for else [])]):
            self.locks.release(state.pipeline_name, env, state.release_id)
        log.error("release %s stopped: %s", state.release_id, reason)
        self.publisher.publish(self.settings.updates_topic, ReleaseNotice(
            state.release_id, NoticeKind.STAGE_FAILED, active[0] if active else "", f"release {state.release_id} "
            f"stopped: {reason}"))
        return Decision(GateOutcome.REFUSED, reason)

    def _refuse_claim(self, event: Event, refused: str) -> Decision:
        """An event whose claim the source of truth does not back: recorded and announced, never applied."""
        log.warning("%s event %s refused: %s", event.type.value, event.id, refused)
        self._keep(event, f"{event.type.value} refused: {refused}")
        self.publisher.publish(self.settings.updates_topic, ReleaseNotice(
            event.release_id, NoticeKind.REFUSED, getattr(event, "stage", ""),
            f"{event.type.value} event refused: {refused}"))
        return Decision(GateOutcome.REFUSED, refused)

    # -- side effects ---------------------------------------------------------
    def _carry_out(
        self, pipeline: Pipeline, state: ReleaseState, token: Any, batch_id: str, commands: tuple[Command, ...],
        new_runs_until: float | None = None,
    ) -> None:
        """``new_runs_until``: given by the handler that just wrote the batch. Until then (half
        its lease: a handler that is slower may have been taken over) its starts are of run ids
        nothing carries yet, and the executors skip their lookup (StartStage.known_new)."""
        handles: dict[str, dict[str, Any]] = {}
        changes = self._execute(pipeline, state, commands, handles, new_runs_until)
        if self.histories is not None:
            record_batch(self.histories, pipeline, state, commands, handles, self.clock.now(), batch_id)
        self._complete(state, token, batch_id, handles, changes)

    def _execute(self, pipeline: Pipeline, state: ReleaseState, commands: tuple[Command, ...],
                 handles: dict[str, dict[str, Any]] | None = None,
                 new_runs_until: float | None = None) -> dict[str, Any] | None:
        """Carry out ``commands``, the executors' handles into ``handles``; returns what the
        approval request learnt of the release's changes (GitHub's compare), None if nothing."""
        batch = _Batch(pipeline, state, {} if handles is None else handles, new_runs_until=new_runs_until)
        for command in commands:
            COMMAND_HANDLERS[type(command)](self, batch, command)
        return batch.changes

    @property
    def _lease_s(self) -> float:
        """How long a batch's handler may take before another one takes it over. Every
        command is a short call now: checks run as scheduled probes, not in the handler."""
        return float(self.settings.outbox_lease_s)

    def _roll_back(self, command: RollBack) -> dict[str, Any]:
        try:
            at = self.clock.now()
            return {"rolled_back": [
                {**self.roll_back(service, command.targets.get(service)), "at": at, "by": "the gate",
                 "why": command.reason, "recorded_target": command.targets.get(service, "")}
                for service in command.services]}
        except ExecutorError as exc:
            # Recorded on the stage and announced; retrying would not make it possible.
            log.error("%s", exc)
            self.publisher.publish(self.settings.updates_topic, ReleaseNotice(
                command.release_id, NoticeKind.STAGE_FAILED, command.stage,
                f"rollback of {command.stage} failed: {exc}; roll back by hand"))
            return {"rollback_error": str(exc)}

    def _start(self, pipeline: Pipeline, command: StartStage) -> dict[str, Any]:
        stage = pipeline.stage(command.stage)
        try:
            started = self.executors[command.kind].start(pipeline, stage, command)
            finish, handle = started.finished, dict(started.handle)
        except ExecutorError as exc:
            log.warning("%s", exc)
            finish, handle = None, {"start_error": str(exc)}
            self._publish_finish(command, Outcome.FAILED, str(exc), {})
        if finish is not None:
            # Published before the batch is removed: a crash in between repeats the
            # start (idempotent) and the finish (a second one is stale), losing nothing.
            self._publish_finish(command, finish.outcome, finish.reason, dict(finish.result))
        elif "start_error" not in handle:
            self._follow(pipeline, command, handle)
        return {"stage_run_id": command.stage_run_id, **handle}

    def _follow(self, pipeline: Pipeline, command: StartStage, handle: Mapping[str, Any]) -> None:
        """Schedule the first probe (idempotent by task id, like the start before it)."""
        if self.probes is None:
            if command.kind == CHECK_KIND:
                self._publish_finish(command, Outcome.FAILED, "no probe scheduler is configured to run checks", {})
            return
        try:
            follow(self.probes, release_id=command.release_id, stage=command.stage,
                   stage_run_id=command.stage_run_id, kind=command.kind, pipeline_digest=pipeline.digest,
                   timeout_s=pipeline.stage(command.stage).timeout_s, handle=handle, now=self.clock.now())
        except ExecutorError as exc:  # the probe was refused (e.g. no cloudtasks.tasks.create): nothing follows it
            log.warning("%s", exc)
            self._publish_finish(command, Outcome.FAILED, f"the stage cannot be followed: {exc}", {})

    def _follow_rollback(self, state: ReleaseState, command: FollowRollback) -> None:
        """Probes follow a rollback by hand's rollout like any other (idempotent by task id)."""
        if self.probes is None:
            return
        target = {"service": command.service, "revision": command.revision, "percent": 100,
                  "operation": command.operation}
        try:
            follow(self.probes, release_id=command.release_id, stage=command.stage,
                   stage_run_id=f"rollback.{command.request_id}", kind=ROLLBACK_KIND,
                   pipeline_digest=state.pipeline_digest, timeout_s=ROLLBACK_FOLLOW_S,
                   handle={"revisions": [target], "landed": dict(command.landed)}, now=self.clock.now())
        except ExecutorError as exc:
            log.warning("rollback %s cannot be followed: %s", command.request_id, exc)

    def _end_bake_early(self, pipeline: Pipeline, state: ReleaseState, command: EndBakeEarly) -> None:
        """The skip probe, at once (idempotent by its task id); its finish decides through the gate."""
        st = state.stages.get(command.stage)
        if self.probes is None or st is None or st.stage_run_id != command.stage_run_id:
            return
        self.probes.schedule(skip_probe_task(state.release_id, command.stage, st, pipeline.digest), self.clock.now())

    def _publish_finish(self, command: StartStage, outcome: Outcome, reason: str, result: dict) -> None:
        self.publisher.publish(self.settings.events_topic, StageFinished(
            "", command.release_id, command.stage, command.stage_run_id, outcome, reason, result))

    def _complete(self, state: ReleaseState, token: Any, batch_id: str, handles: dict[str, dict[str, Any]],
                  changes: dict[str, Any] | None = None) -> None:
        """Remove the carried-out batch and record the executors' handles on their stages.

        The first try reuses the state just written (no read); only when another event
        moved the release in the meantime is it read again."""
        release_id = state.release_id
        for attempt in range(MAX_CONFLICT_RETRIES):
            if attempt:
                got = self.store.get(release_id)
                if got is None:
                    return
                state, token = got
            # Only what changed is sent: encoding the whole document is most of the CPU.
            outbox = [b for b in state.outbox if b["event_id"] != batch_id]
            fields: dict[tuple[str, ...], Any] = {("outbox",): outbox,
                                                  ("wake_at",): next_wake(state, self.clock.now(), outbox)}
            for stage_id, handle in handles.items():
                st = state.stages.get(stage_id)
                if st is not None and st.stage_run_id == handle["stage_run_id"]:
                    fields[("stages", stage_id, "result")] = {**handle, **st.result}
            if changes is not None:
                fields[("changes",)] = changes
            try:
                self.store.update_fields(release_id, fields, token)
                return
            except StaleWrite:
                continue
        raise TransientError("could not record the carried-out commands", release_id=release_id)

    def _recover(self, pipeline: Pipeline, state: ReleaseState, token: Any, event_id: str) -> None:
        """Carry out batches whose handler died; wait briefly for one still in flight."""
        now = self.clock.now()
        for batch in list(state.outbox):
            if batch["lease_until"] <= now:
                commands = tuple(command_from_dict(c) for c in batch["commands"])
                batch["lease_until"] = now + self._lease_s
                try:
                    token = self.store.update(state, token)
                except StaleWrite:
                    return  # another handler claimed it or the release moved on
                log.warning("release %s: carrying out commands of %s again", state.release_id, batch["event_id"])
                self._carry_out(pipeline, state, token, batch["event_id"], commands)
                return
            if batch["event_id"] == event_id:
                self._wait_for_batch(state.release_id, event_id)

    def _wait_for_batch(self, release_id: str, batch_id: str, poll_s: float = 0.05) -> None:
        deadline = self.monotonic() + IN_FLIGHT_WAIT_S
        while self.monotonic() < deadline:
            self.sleep(poll_s)
            got = self.store.get(release_id)
            if got is None or all(b["event_id"] != batch_id for b in got[0].outbox):
                return
        raise TransientError(f"commands of event {batch_id} are still in flight; retry later", release_id=release_id)

    def _keep(self, event: Event, reason: str) -> None:
        """A refused event as a dead letter, encoded as it came, so it can be re-driven once its
        claim is backed (the gate checks the claim again then)."""
        data, attributes = encode(event)
        self.dead_letters.record(DeadLetter(event.id, reason, event.type.value, self.clock.now(), data, attributes))

    def _unknown_release(self, event: Event) -> Decision:
        reason = f"unknown release {event.release_id!r}"
        if isinstance(event, StageReplay):
            # A refused replay is recorded and published, so the operator learns why.
            self._keep(event, f"replay {event.replay_id} refused: {reason}")
            self.publisher.publish(self.settings.updates_topic, ReleaseNotice(
                event.release_id, NoticeKind.REFUSED, event.stage, f"replay {event.replay_id} refused: {reason}"))
        return Decision(GateOutcome.UNKNOWN_RELEASE, reason)


# -- the command table (cosmicpython's COMMAND_HANDLERS): command type -> what carries it out --
@dataclass
class _Batch:
    """One batch of commands being carried out: what they read, and what they leave behind
    (the executors' handles by stage, the changes an approval request learnt)."""

    pipeline: Pipeline
    state: ReleaseState
    handles: dict[str, dict[str, Any]]
    changes: dict[str, Any] | None = None
    new_runs_until: float | None = None  # see Dispatcher._carry_out


def _start_stage(d: Dispatcher, batch: _Batch, command: StartStage) -> None:
    if batch.new_runs_until is not None and d.clock.now() < batch.new_runs_until:
        command = replace(command, known_new=True)
    batch.handles[command.stage] = d._start(batch.pipeline, command)


def _request_approval(d: Dispatcher, batch: _Batch, command: RequestApproval) -> None:
    batch.changes = d.approvals.request(batch.state, command).get("changes") or batch.changes


def _notify(d: Dispatcher, batch: _Batch, command: Notify) -> None:
    d.publisher.publish(d.settings.updates_topic, ReleaseNotice.of(command))
    d.notifier.notify(batch.state, command)


def _acquire_lock(d: Dispatcher, batch: _Batch, command: AcquireLock) -> None:
    d.locks.acquire(batch.state.pipeline_name, command.environment, command.release_id, command.created_at,
                    batch.state.version, batch.pipeline.services_in(command.environment))


def _release_lock(d: Dispatcher, batch: _Batch, command: ReleaseLock) -> None:
    d.locks.release(batch.state.pipeline_name, command.environment, command.release_id)


def _roll_back(d: Dispatcher, batch: _Batch, command: RollBack) -> None:
    batch.handles[command.stage] = {"stage_run_id": command.stage_run_id, **d._roll_back(command)}


def _follow_rollback(d: Dispatcher, batch: _Batch, command: FollowRollback) -> None:
    d._follow_rollback(batch.state, command)


def _end_bake_early(d: Dispatcher, batch: _Batch, command: EndBakeEarly) -> None:
    d._end_bake_early(batch.pipeline, batch.state, command)


def _record_durations(d: Dispatcher, batch: _Batch, command: RecordDurations) -> None:
    d.locks.record_durations(batch.state.pipeline_name, command.release_id, command.durations)


COMMAND_HANDLERS: dict[type, Callable[[Dispatcher, _Batch, Any], None]] = {
    StartStage: _start_stage,
    RequestApproval: _request_approval,
    Notify: _notify,
    AcquireLock: _acquire_lock,
    ReleaseLock: _release_lock,
    RollBack: _roll_back,
    FollowRollback: _follow_rollback,
    EndBakeEarly: _end_bake_early,
    RecordDurations: _record_durations,
}


def _batch_starting(state: ReleaseState, stage_run_id: str, now: float) -> str:
    """The batch whose handler is starting ``stage_run_id`` and has not recorded its handle yet
    ("" if none; a batch whose lease ran out has no handler left to wait for: it is recovered)."""
    for batch in state.outbox:
        if batch["lease_until"] > now and any(isinstance(c, StartStage) and hmac.compare_digest(c.stage_run_id.encode(), stage_run_id.encode())
               for c in map(command_from_dict, batch["commands"])):
            return batch["event_id"]
    return ""
