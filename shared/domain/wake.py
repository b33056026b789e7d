"""When the sweeper must look at a release again (``wake_at``), and when it may be deleted
(``expire_at``). Pure: the gate and the dispatcher set both on every write.

Why a wake time
---------------
The sweeper is the safety net, not the engine: completions arrive as events (Cloud Build
notifications, probes). So it reads only releases that can need it now, by one range
query on ``wake_at`` (shared/app/sweeper.py):
* a running stage: its deadline, or ``SAFETY_NET_S`` from now, whichever comes first,
  in case its probes went quiet (the sweeper then polls it once and moves the time on);
* an approval being waited for: its expiry (a release waiting hours costs no read);
* a release queued for a lock: ``QUEUED_RECHECK_S`` from now, to ask again in case a
  grant got lost;
* commands not yet carried out (the outbox): the end of their lease;
* stopped and finished releases: never (no ``wake_at``).

Retention: finished, superseded and stopped releases expire ``RETENTION_S`` after their
last change (a Firestore TTL policy on ``expire_at`` deletes them, deploy/); a replay of
a stopped release clears it again.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

SAFETY_NET_S = 90.0
QUEUED_RECHECK_S = 120.0
RETENTION_S = 90 * 24 * 3600.0
# Records that only matter for a while: webhook deliveries (GitHub redelivers within
# hours), dead letters (inspected within weeks), used approval links.
RECORD_RETENTION_S = 30 * 24 * 3600.0


def next_wake(state: ReleaseState, now: float, outbox: Iterable[Mapping[str, Any]] = ()) -> float | None:
    """The earliest time the sweeper must look at ``state``; None when it never must."""
    if state.status.terminal or state.status is ReleaseStatus.STOPPED:
        return None
    times = [float(batch["lease_until"]) for batch in outbox]
    if state.status is ReleaseStatus.QUEUED:
        times.append(now + QUEUED_RECHECK_S)
    for stage in state.stages.values():
        if stage.status is StageStatus.RUNNING:
            times.append(now + SAFETY_NET_S)
            if stage.deadline is not None:
                times.append(stage.deadline)
        elif (stage.status is StageStatus.WAITING and state.status is ReleaseStatus.AWAITING_APPROVAL
              and stage.deadline is not None):
            times.append(stage.deadline)
    if not times and state.status is ReleaseStatus.RUNNING:
        times.append(now + SAFETY_NET_S)  # running, nothing started yet: a lost release.started
    return min(times) if times else None


def expiry(state: ReleaseState, now: float) -> float | None:
    """When the release may be deleted: only once it stopped or ended."""
    if state.status.terminal or state.status is ReleaseStatus.STOPPED:
        return now + RETENTION_S
    return None
