"""How long a test waits for releases: bounded by the pipeline's own stage timeouts, not a guess.

A fixed budget (it was 120 s) is too short on two cores shared with other work and too long
when a release is stuck. Instead the wait runs while the releases can still move: as long
as a running stage is within its deadline (started_at + the stage's timeout, as the gate
set it) plus ``MARGIN_S``, or something changed less than ``MARGIN_S`` ago. Past that the
gate's sweeper would have failed the stage itself, so the release is stuck and the wait
fails at once, printing what it saw: each release's status and its stages with their times.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from shared.domain.state import ReleaseStatus, StageStatus

# After a stage's deadline: the local sweeper ticks every 2 s and fails it, the notice and the
# next event travel through Pub/Sub; 60 s covers that with room for two busy cores (the
# suite took 12 minutes instead of 6 when other work shared them).
MARGIN_S = 60.0
ACTIVE = (StageStatus.RUNNING, StageStatus.WAITING)
ENDED = (ReleaseStatus.STOPPED, ReleaseStatus.SUPERSEDED)


def describe(states: Sequence[Any], now: float) -> str:
    """Each release and its stages that have started, with their times relative to ``now``."""
    lines = []
    for s in states:
        lines.append(f"release {s.release_id}: {s.status.value}" + (f" ({s.reason})" if s.reason else "")
                     + (f", outbox {len(s.outbox)} batch(es)" if s.outbox else ""))
        for sid, st in s.stages.items():
            if st.status is StageStatus.PENDING:
                continue
            times = [f"{label} {at - now:+.1f} s" for label, at in (("started", st.started_at),
                     ("finished", st.finished_at), ("deadline", st.deadline)) if at]
            lines.append(f"  {sid}: {st.status.value}" + (f" ({', '.join(times)})" if times else "")
                         + (f" - {st.reason}" if st.reason else ""))
    return "\n".join(lines)


def wait_for_releases(store, release_ids: Sequence[str], condition: Callable[[list], bool], what: str,
                      margin_s: float = MARGIN_S, poll_s: float = 0.2, allow_ended: bool = False) -> list:
    """Poll the releases until ``condition(states)``; returns the states. Fails when one stops or
    is superseded (unless ``allow_ended``) or when nothing can move any more (see the module)."""
    last_seen, moved_at = None, time.time()
    while True:
        states = [store.get(rid)[0] for rid in release_ids]
        now = time.time()
        if condition(states):
            return states
        ended = [s for s in states if s.status in ENDED]
        if ended and not allow_ended:
            raise AssertionError(f"while waiting for {what}, a release ended:\n{describe(states, now)}")
        seen = [(s.status, tuple((sid, st.status, st.attempt) for sid, st in s.stages.items())) for s in states]
        if seen != last_seen:
            last_seen, moved_at = seen, now
        deadlines = [st.deadline for s in states for st in s.stages.values() if st.status in ACTIVE and st.deadline]
        bound = max([moved_at, *deadlines]) + margin_s
        if now > bound:
            raise AssertionError(f"gave up waiting for {what}: nothing moved for {now - moved_at:.0f} s and no "
                                 f"running stage is within its timeout + {margin_s:.0f} s:\n{describe(states, now)}")
        time.sleep(poll_s)


def wait_for_release(store, release_id: str, condition: Callable[[Any], bool], what: str, **kwargs) -> Any:
    """``wait_for_releases`` for one release."""
    return wait_for_releases(store, [release_id], lambda states: condition(states[0]), what, **kwargs)[0]
