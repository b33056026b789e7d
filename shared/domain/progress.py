"""Progress of a release: elapsed times, the expected end, and whether it stalled. Pure.

The expected end comes from the same application's earlier releases: for each stage,
the median of its last ``KEPT`` successful durations (kept in the application's record
``apps/{app}`` under ``stage_medians``, filled by ``add_durations`` when a release
succeeds). Stages with no history count as unknown, and the time a human takes to
approve is never estimated: the ETA says so instead of guessing.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping

from shared.domain.pipeline import Pipeline, StageKind
from shared.domain.stall import current_stage, stall
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

KEPT = 20  # durations per stage the median is taken over
COUNTED_KEY = "_releases"  # release ids already counted (stage ids cannot start with "_")


def succeeded_durations(state: ReleaseState, pipeline: Pipeline) -> dict[str, float]:
    """Duration of every stage that succeeded in its last attempt (approvals left out: a human's time)."""
    out = {}
    for stage in pipeline.stages:
        st = state.stages.get(stage.id)
        if (st is not None and stage.kind is not StageKind.APPROVAL and st.status is StageStatus.SUCCEEDED
                and st.duration_s is not None):
            out[stage.id] = round(float(st.duration_s), 3)
    return out


def add_durations(medians: Mapping[str, Any], release_id: str, durations: Mapping[str, float]) -> dict[str, Any]:
    """The medians with one more release counted; the same release twice changes nothing."""
    new = {k: (dict(v) if isinstance(v, Mapping) else list(v)) for k, v in medians.items()}
    counted = list(new.get(COUNTED_KEY) or [])
    if release_id in counted:
        return new
    for stage, seconds in durations.items():
        entry = new.setdefault(stage, {"recent": [], "median_s": None})
        entry["recent"] = (list(entry.get("recent") or []) + [float(seconds)])[-KEPT:]
        entry["median_s"] = round(statistics.median(entry["recent"]), 3)
    new[COUNTED_KEY] = (counted + [release_id])[-KEPT:]
    return new


def progress(state: ReleaseState, pipeline: Pipeline, medians: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Elapsed time of the current stage and of the release, the expected end, and a stall flag.

    ``remaining_s`` is None when a stage still to run has no history; ``waits_for_human``
    is set while (or before) an approval, whose duration is never estimated."""
    current = current_stage(state, pipeline)
    end = now
    if state.status.terminal:
        end = state.updated_at
    elif state.status is ReleaseStatus.STOPPED:
        # A stopped release took until its stage failed; waiting for a replay is not part of it.
        failed = state.stages.get(state.stopped_at_stage)
        end = failed.finished_at if failed is not None and failed.finished_at is not None else state.updated_at
    result: dict[str, Any] = {
        "stage": current.id if current else "", "stage_status": state.stages[current.id].status.value if current else "",
        "stage_elapsed_s": None, "release_elapsed_s": round(max(0.0, end - state.created_at), 1),
        "remaining_s": None, "eta_at": None, "waits_for_human": False, "stalled_s": None, "timeout_s": None,
    }
    if current is None or state.status.terminal:
        return result
    st = state.stages[current.id]
    if st.started_at is not None:
        result["stage_elapsed_s"] = round(max(0.0, now - st.started_at), 1)
    # Not moved for longer than the stage may take: the sweeper should have acted (or a lock never came).
    result["timeout_s"] = current.timeout_s
    stalled = stall(state, pipeline, now)
    if stalled is not None:
        result["stalled_s"] = stalled.idle_s
    remaining, known = 0.0, True
    for stage in pipeline.stages[pipeline.index(current.id):]:
        later = state.stages[stage.id]
        if stage.optional and not state.chaos_requested_by:
            continue
        if stage.kind is StageKind.APPROVAL:
            if later.status is not StageStatus.SUCCEEDED:
                result["waits_for_human"] = True
            continue
        median = (medians.get(stage.id) or {}).get("median_s") if isinstance(medians.get(stage.id), Mapping) else None
        if median is None:
            known = False
            continue
        if stage.id == current.id and result["stage_elapsed_s"] is not None:
            remaining += max(0.0, median - result["stage_elapsed_s"])
        elif later.status is not StageStatus.SUCCEEDED:
            remaining += median
    if known:
        result["remaining_s"] = round(remaining, 1)
        result["eta_at"] = now + remaining
    return result


def progress_text(p: Mapping[str, Any], fmt) -> str:
    """One line for show/watch/dashboard; ``fmt`` formats seconds (notes.duration_text)."""
    if not p["stage"]:
        return f"took {fmt(p['release_elapsed_s'])}"
    parts = [f"{p['stage']} {p['stage_status']}" + (f" for {fmt(p['stage_elapsed_s'])}" if p["stage_elapsed_s"] is not None
                                                     else ""),
             f"release running for {fmt(p['release_elapsed_s'])}"]
    if p["remaining_s"] is not None:
        parts.append(f"about {fmt(p['remaining_s'])} left" + (" plus the approval" if p["waits_for_human"] else ""))
    else:
        parts.append("no estimate yet (a stage to run has no history)")
    return "; ".join(parts)
