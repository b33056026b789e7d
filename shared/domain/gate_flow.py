"""The gate's start and advance: the next stage to run, its start or approval request, failing a stage, deadlines."""
from __future__ import annotations

from shared.domain.commands import AcquireLock, NoticeKind, RecordDurations, RequestApproval, RollBack, StartStage
from shared.domain.events import ReleaseStarted, Tick
from shared.domain.identity import normalise
from shared.domain.pipeline import Stage, StageKind
from shared.domain.progress import succeeded_durations
from shared.domain.stage_results import BuildResult, result_of
from shared.domain.state import ReleaseStatus, StageStatus
from shared.domain.gate_run import DEFAULT_APPROVAL_EXPIRY_S, LOCKED_ENVIRONMENTS, GateOutcome, Run
from shared.domain.gate_rollback import roll_back_checked_deploy


def on_started(run: Run, event: ReleaseStarted) -> tuple[GateOutcome, str]:
    if any(s.attempt for s in run.state.stages.values()) or run.state.status is not ReleaseStatus.RUNNING:
        return GateOutcome.IGNORED, "release already underway"
    advance(run, 0)
    return GateOutcome.APPLIED, f"started {run.pipeline.stages[0].label}"


def on_tick(run: Run, event: Tick) -> tuple[GateOutcome, str]:
    if run.state.status is ReleaseStatus.QUEUED:
        # A grant may have been lost with a crashed handler: ask again (idempotent).
        env = run.state.waiting_for
        run.commands.append(AcquireLock(run.state.release_id, env, run.state.created_at))
        return GateOutcome.IGNORED, f"still queued for {env}"
    return GateOutcome.IGNORED, "nothing overdue"


def advance(run: Run, index: int, replay: bool = False) -> None:
    """Start the first stage from ``index`` that should run, or finish the release."""
    state = run.state
    for stage in run.pipeline.stages[index:]:
        st = state.stages[stage.id]
        forced, replay = replay, False  # only the replayed stage itself runs again
        if st.status is StageStatus.SUCCEEDED and not forced:
            continue
        if stage.optional and not state.chaos_requested_by:
            continue  # stays pending: it may still be requested until the approval
        if stage.kind is StageKind.APPROVAL:
            if st.status is StageStatus.WAITING and not forced:
                state.status = ReleaseStatus.AWAITING_APPROVAL
                run.release_locks()
                return
            request_approval(run, stage)
            return
        start(run, stage)
        return
    state.status = ReleaseStatus.SUCCEEDED
    run.release_locks()
    run.commands.append(RecordDurations(state.release_id, succeeded_durations(state, run.pipeline)))
    for stage in run.pipeline.stages:
        if state.stages[stage.id].status is StageStatus.PENDING:
            state.stages[stage.id].status = StageStatus.SKIPPED
    run.notify(NoticeKind.RELEASE_FINISHED, "", f"{run.title()} is complete: {state.tag} takes all traffic.")


def start(run: Run, stage: Stage) -> None:
    if run.needs_approval(stage) and not run.approved():
        # By meaning, not position: validation refuses files where this could happen, and
        # a pinned definition that slipped through still never runs prod unapproved: the
        # release stops there, saying why.
        fail(run, stage, "needs a valid approval for this attempt first; none was given")
        return
    env = stage.environment
    if env in LOCKED_ENVIRONMENTS and env not in run.state.locks_held:
        run.archive(run.state.stages[stage.id])
        run.state.stages[stage.id].status = StageStatus.QUEUED
        run.state.status = ReleaseStatus.QUEUED
        run.state.waiting_for = env
        run.changed = True
        run.commands.append(AcquireLock(run.state.release_id, env, run.state.created_at))
        return
    st = run.begin_attempt(stage, StageStatus.RUNNING, stage.timeout_s)
    run.state.status = ReleaseStatus.RUNNING
    inputs = {
        "release_id": run.state.release_id,
        "tag": run.state.tag,
        "version": run.state.version,
        "commit": run.state.commit,
        "repo": run.state.repo,
    }
    digest = image_digest(run, stage)
    if digest:  # the image this release built: deploys and jobs run it by digest
        inputs["digest"] = digest
    run.commands.append(StartStage(run.state.release_id, stage.id, st.stage_run_id, st.attempt, stage.kind.value, inputs))


def request_approval(run: Run, stage: Stage) -> None:
    expiry = int(stage.params.get("expiry_s", DEFAULT_APPROVAL_EXPIRY_S))
    st = run.begin_attempt(stage, StageStatus.WAITING, expiry)
    run.state.status = ReleaseStatus.AWAITING_APPROVAL
    run.release_locks()  # nobody waits behind a release that waits for a human
    approvers = tuple(a for a in stage.params["approvers"] if normalise(a) != run.state.pusher)
    run.commands.append(RequestApproval(run.state.release_id, stage.id, st.attempt, approvers, st.deadline,
                                         image_digest(run, stage)))
    run.notify(NoticeKind.APPROVAL_NEEDED, stage.id, f"{run.title()} waits for approval; links went to {', '.join(approvers)}.")


def image_digest(run: Run, before: Stage) -> str:
    """The digest the latest stage before ``before`` reported for the image (build, push)."""
    for earlier in reversed(run.pipeline.stages[: run.pipeline.index(before.id)]):
        result = result_of(earlier.kind, run.state.stages[earlier.id].result)
        if isinstance(result, BuildResult) and result.digest:
            return result.digest
    return ""


def fail(run: Run, stage: Stage, reason: str) -> None:
    st = run.state.stages[stage.id]
    st.reason = reason
    run.finish(stage, StageStatus.FAILED)
    rolled, again = "", stage.id
    if stage.kind is StageKind.CHECK:
        before = len(run.commands)
        roll_back_checked_deploy(run, stage, reason)
        for command in run.commands[before:]:
            if isinstance(command, RollBack):
                to = ", ".join(f"{s} to {command.targets.get(s) or 'the last good tagged revision'}"
                               for s in command.services)
                rolled = f" Rolled back {command.stage}: all traffic of {to} (what served before this release)."
                # The checked canary is gone: a replay of the check has nothing to check. Replaying
                # the deploy puts the canary back (the gate allows it: every stage before it passed).
                again = command.stage
    run.state.status = ReleaseStatus.STOPPED
    run.release_locks()
    run.state.stopped_at_stage = stage.id
    run.state.reason = f"{stage.label} failed: {reason}"
    run.notify(
        NoticeKind.STAGE_FAILED,
        stage.id,
        f"{run.title()} stopped: {stage.label} failed: {reason}.{rolled} "
        f"Gate: {stage.gate or 'the release stops'}. Fix the cause, then run "
        f"`relctl replay {run.state.release_id} {again} --reason \"…\"`"
        + (" (or push a new commit)." if again != stage.id else "."),
    )


def expire_overdue(run: Run) -> None:
    for stage in run.pipeline.stages:
        st = run.state.stages[stage.id]
        if st.deadline is None or run.now <= st.deadline:
            continue
        if st.status is StageStatus.RUNNING:
            fail(run, stage, f"timed out after {stage.timeout_s}s")
        elif st.status is StageStatus.WAITING and run.state.status is ReleaseStatus.AWAITING_APPROVAL:
            run.record("approval expired", "", stage.id, "nobody decided in time", attempt=st.attempt)
            fail(run, stage, "approval expired")
