"""A stalled release, and whether its stall was announced yet. Pure: ``now`` is given.

A release stalls when its current stage (running, waiting for an approval, or queued for
a lock) has not moved for longer than that stage's timeout: measured from the release's
``updated_at``, which every transition moves. The sweeper announces a stall once: it
records ``stall_announced_for`` (a key naming the stage attempt and the ``updated_at`` the
stall is measured from) with a field write that leaves ``updated_at`` alone. A release
that moves gets a new ``updated_at``, hence a new key: its next stall is announced again.

The notice waits ``ANNOUNCE_AFTER_S`` past the timeout: a running stage reaches its
deadline no later than it stalls, and the sweeper's own deadline tick should move it
first; only a release that recovery did not move is worth waking people for.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.domain.commands import NoticeKind, Notify
from shared.domain.pipeline import Pipeline, Stage
from shared.domain.state import ReleaseState, StageStatus

ACTIVE = (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED)
ANNOUNCE_AFTER_S = 120.0  # two sweeper ticks (Cloud Scheduler's minimum is one minute)


@dataclass(frozen=True)
class Stall:
    stage: str
    status: str  # the stage's status: running, waiting or queued
    idle_s: float  # since the release last moved
    timeout_s: int
    key: str  # what ``stall_announced_for`` holds once it is announced


def current_stage(state: ReleaseState, pipeline: Pipeline) -> Stage | None:
    """The first stage running, waiting or queued; None when none is."""
    return next((s for s in pipeline.stages if state.stages[s.id].status in ACTIVE), None)


def stall(state: ReleaseState, pipeline: Pipeline, now: float) -> Stall | None:
    """The stall of ``state`` at ``now``; None when it is finished, stopped or has moved recently."""
    if state.status.terminal:
        return None
    current = current_stage(state, pipeline)
    if current is None:
        return None
    since = state.updated_at or state.created_at
    idle = now - since
    if idle <= current.timeout_s:
        return None
    st = state.stages[current.id]
    return Stall(current.id, st.status.value, round(idle, 1), current.timeout_s,
                 f"{current.id}/{st.stage_run_id or '-'}@{since!r}")


def stall_to_announce(state: ReleaseState, pipeline: Pipeline, now: float) -> Stall | None:
    """The stall to announce now: stalled past the grace and not announced for this stall yet."""
    found = stall(state, pipeline, now)
    if found is None or found.idle_s <= found.timeout_s + ANNOUNCE_AFTER_S:
        return None
    return None if state.stall_announced_for == found.key else found


def stall_notice(state: ReleaseState, found: Stall) -> Notify:
    """The ``stalled`` notice (its words and next step: shared/adapters/notify/messages.py)."""
    waits = f" for the lock of {state.waiting_for}" if found.status == StageStatus.QUEUED.value and state.waiting_for else ""
    return Notify(state.release_id, NoticeKind.STALLED, found.stage,
                  f"release {state.release_id} has not moved for {_minutes(found.idle_s)}: stage {found.stage} is "
                  f"{found.status}{waits}, longer than its timeout of {_minutes(found.timeout_s)}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min" if seconds >= 60 else f"{int(seconds)} s"
