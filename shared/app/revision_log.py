"""Keeps each service's revision history (shared/domain/revision_history.py) as releases move.

The dispatcher calls ``record_batch`` after it carried out a batch of commands, with the new
release state and the handles the executors returned; the operator function calls
``record_manual`` after a rollback by hand. Every record is idempotent (moves by id,
verdicts only move on from pending), so a batch carried out again records nothing twice.

Verdicts: a deploy's revision is PENDING; the gate's rollback after a failed check marks
what it moved away from FAILED (after a cancel: ROLLED_BACK); a release that succeeds marks
the revisions its deploys left serving COMPLETED and its other pending ones NEVER_SERVED;
a cancelled release's pending revisions become ROLLED_BACK (served) or NEVER_SERVED.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from shared.app.ports import RevisionHistories
from shared.domain.commands import Command, RecordDurations, RollBack, StartStage
from shared.domain.pipeline import Pipeline, StageKind
from shared.domain.revision_history import (RevisionRecord, ServiceHistory, TrafficMove, Verdict, split_of)
from shared.domain.stage_results import result_of
from shared.domain.state import ReleaseState, ReleaseStatus


def split_from(items: Any) -> tuple[tuple[str, int], ...]:
    return split_of((str(i.get("revision", "")), int(i.get("percent", 0))) for i in items or [])


def _move(move_id: str, at: float, kind: str, target: Mapping[str, Any], **extra: Any) -> TrafficMove:
    return TrafficMove(move_id, at, kind, split_from(target.get("before")), split_from(target.get("after")),
                       operation=str(target.get("operation") or ""), **extra)


def record_batch(histories: RevisionHistories, pipeline: Pipeline, state: ReleaseState,
                 commands: Iterable[Command], handles: Mapping[str, Mapping[str, Any]], now: float,
                 batch_id: str = "") -> None:
    """``batch_id`` (the event that made the batch) tells two rollbacks of one stage run apart."""
    changes: dict[str, list] = {}

    def later(service: str, change) -> None:
        changes.setdefault(service, []).append(change)

    for command in commands:
        handle = handles.get(getattr(command, "stage", ""), {})
        if isinstance(command, StartStage) and command.kind in (StageKind.DEPLOY.value, StageKind.TRAFFIC.value):
            for target in handle.get("revisions") or []:
                service, revision = str(target.get("service")), str(target.get("revision"))
                if command.kind == StageKind.DEPLOY.value:
                    record = RevisionRecord(revision, state.release_id, state.version, state.commit,
                                            str(handle.get("image") or ""), Verdict.PENDING, now)
                    later(service, lambda h, r=record: h.with_revision(r))
                if target.get("after"):
                    move = _move(f"{command.stage_run_id}:{service}", now, command.kind, target, by="the gate",
                                 why=f"{command.stage} of release {state.release_id}", release_id=state.release_id)
                    later(service, lambda h, m=move: h.with_move(m))
        elif isinstance(command, RollBack):
            cancelled = state.status is ReleaseStatus.CANCELLED
            for entry in handle.get("rolled_back") or []:
                service = str(entry.get("service"))
                move = _move(f"{batch_id or command.stage_run_id}:rollback:{service}", now, "rollback", entry,
                             by="the gate",
                             why=command.reason, release_id=state.release_id)
                left = {r for r, _ in move.before} - {r for r, _ in move.after}
                verdict = Verdict.ROLLED_BACK if cancelled else Verdict.FAILED

                def change(h: ServiceHistory, move=move, left=left, verdict=verdict) -> ServiceHistory:
                    for revision in sorted(left):
                        h = h.with_verdict(revision, verdict, move.why)
                    return h.with_move(move)
                later(service, change)
    if state.status is ReleaseStatus.SUCCEEDED and any(isinstance(c, RecordDurations) for c in commands):
        for service, revisions in _deployed(pipeline, state).items():
            later(service, lambda h, revs=revisions: _close(h, state.release_id, revs, Verdict.COMPLETED))
    elif state.status is ReleaseStatus.CANCELLED:
        for service in _deployed(pipeline, state):
            later(service, lambda h: _close(h, state.release_id, set(), Verdict.ROLLED_BACK))
    for service, steps in changes.items():
        def apply(h: ServiceHistory, steps=steps) -> ServiceHistory:
            for step in steps:
                h = step(h)
            return h
        histories.change(service, apply)


def _deployed(pipeline: Pipeline, state: ReleaseState) -> dict[str, set[str]]:
    """Per service, the revisions the current attempts of the release's deploy stages made."""
    found: dict[str, set[str]] = {}
    for stage in pipeline.stages:
        if stage.kind is StageKind.DEPLOY:
            for target in result_of(stage.kind, state.stages[stage.id].result).revisions:
                found.setdefault(target.service, set()).add(target.revision)
    return found


def _close(history: ServiceHistory, release_id: str, revisions: set[str], verdict: Verdict) -> ServiceHistory:
    """The release ended: ``revisions`` get ``verdict``; its other pending ones what fits them."""
    served = {r for m in history.moves for r, _ in m.after}
    for name in sorted(revisions):  # also one an operator rolled back by hand that the release then completed
        history = history.with_verdict(name, verdict, f"release {release_id} ended")
    for record in history.revisions:
        if record.release_id != release_id or record.verdict is not Verdict.PENDING:
            continue
        ended = Verdict.ROLLED_BACK if record.name in served else Verdict.NEVER_SERVED
        history = history.with_verdict(record.name, ended, f"release {release_id} ended")
    return history


def record_manual(histories: RevisionHistories, service: str, moved: Mapping[str, Any], *, by: str, why: str,
                  request_id: str, at: float, release_id: str = "") -> ServiceHistory:
    """A rollback by hand: the move (forced or not), and a revision of a release still in flight
    that it moved traffic away from is ROLLED_BACK. A completed revision it left stays completed."""
    move = _move(f"manual:{request_id}", at, "manual", moved, by=by, why=why, release_id=release_id,
                 forced=bool(moved.get("forced")))
    left = {r for r, _ in move.before} - {r for r, _ in move.after}

    def change(h: ServiceHistory) -> ServiceHistory:
        for revision in sorted(left):
            h = h.with_verdict(revision, Verdict.ROLLED_BACK, f"rolled back by hand by {by}: {why}")
        return h.with_move(move)
    return histories.change(service, change)
