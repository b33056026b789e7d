"""Ending a check's bake early by an approver's decision (``relctl skip-bake``). Pure.

Who and when (``skip_refusal``, asked by the operator function for a quick answer and
again by the gate, which decides): only an approver of this release, under the rules of
the approval (on the list, not the person who pushed, identities normalised), only while
a check stage with a bake runs, once per run.

What ends the bake: not the request. The gate records it (timeline: who, when, why) and
sends one more probe of the running check (``EndBakeEarly``). That probe GETs the paths
once and runs the analysis once over the bake so far (``skip_step``); its
``stage.finished`` goes through the gate like every check verdict:

* a path that does not answer 2xx, or an analysis FAIL: the stage FAILS, as the chain's
  next probe would have it. A skip never turns a failing check into a pass.
* an INCONCLUSIVE analysis: too little to judge, so nothing ends yet; the skip probe asks
  again one interval later, until the bake's planned end, when the chain decides as always.
* PASS (or no analysis configured): the stage SUCCEEDS, its result saying the bake was
  ended early, by whom and why.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.events import Outcome
from shared.domain.identity import approval_refusal
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.probes import (CHECK_KIND, IntervalAnalysis, ProbeInterval, ProbeTask, ProbeVerdict, Step,
                                  check_config)
from shared.domain.stage_results import CheckResult, result_of
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

SKIP_PHASE = "skip"
SKIP_SEQ = 100_000  # the skip probe's own task ids, apart from the chain's (one skip per run)


def baking_stage(pipeline: Pipeline, state: ReleaseState) -> Stage | None:
    """The running check stage that has a bake, if any."""
    for stage in pipeline.stages:
        if (stage.kind is StageKind.CHECK and stage.params.get("bake")
                and state.stages[stage.id].status is StageStatus.RUNNING):
            return stage
    return None


def skip_refusal(pipeline: Pipeline, state: ReleaseState, stage_id: str, by: str) -> tuple[int, str]:
    """(HTTP-like status, why) when ``by`` may not end this stage's bake now; (0, "") when they may."""
    if not pipeline.has_stage(stage_id):
        return 404, f"release {state.release_id} has no stage {stage_id!r}"
    stage = pipeline.stage(stage_id)
    if stage.kind is not StageKind.CHECK or not stage.params.get("bake"):
        return 409, f"{stage.label} has no bake to end"
    st = state.stages[stage.id]
    if state.status is not ReleaseStatus.RUNNING or st.status is not StageStatus.RUNNING:
        return 409, f"{stage.label} is {st.status.value}, not baking; only a running bake can be ended early"
    if pipeline.approval_index is None:
        return 403, f"pipeline {pipeline.name} has no approval stage, so nobody may end a bake early"
    approval = pipeline.stages[pipeline.approval_index]
    refused = approval_refusal(by, approval.params["approvers"], state.pusher, state.pushed_by)
    if refused:
        return 403, f"only an approver of this release may end its bake early: {refused}"
    skip = result_of(stage.kind, st.result)
    if isinstance(skip, CheckResult) and skip.bake_skip is not None:
        return 409, f"ending the bake of {stage.label} was already asked by {skip.bake_skip.by or None}"
    return 0, ""


def ended_early(skip: Mapping[str, Any], at: float) -> dict[str, Any]:
    """What a check's ``result.bake`` says about a bake an approver ended early."""
    return {"by": str(skip.get("by", "")), "reason": str(skip.get("reason", "")), "at": at}


def skip_probe_task(release_id: str, stage: str, st: Any, pipeline_digest: str) -> ProbeTask:
    """The skip probe of the running check ``st`` (a StageState): its handle is what the check
    recorded at start (url, paths, window, bake, analysis), its request what the gate recorded."""
    handle = {k: v for k, v in st.result.items() if k != "bake_skip"}
    skip = result_of(CHECK_KIND, st.result)
    asked = skip.bake_skip if isinstance(skip, CheckResult) else None
    return ProbeTask(release_id, stage, st.stage_run_id, CHECK_KIND, pipeline_digest, started_at=float(st.started_at),
                     deadline=float(st.deadline), seq=SKIP_SEQ, handle=handle,
                     check={"phase": SKIP_PHASE, "skip": dict(asked.stored) if asked else {}})


def skip_step(task: ProbeTask, probes: list[Mapping[str, Any]], now: float, analyse: IntervalAnalysis) -> Step:
    """The skip probe's verdict on the bake so far: fail, pass early, ask again, or leave it to the chain."""
    config = check_config(task.handle)
    skip = dict(task.check.get("skip") or {})
    asked = f"when {skip.get('by') or 'an approver'} asked to end the bake early"
    bake = {"bake_s": config["bake_s"], "failed": "", "ended_early": ended_early(skip, now)}
    base = {"url": config["url"], "checks": [dict(p, attempts=1) for p in probes]}
    bad = next((p for p in probes if not (isinstance(p.get("status"), int) and 200 <= p["status"] < 300)), None)
    if bad is not None:
        what = f"answered {bad['status']}" if bad.get("status") is not None else f"failed ({bad.get('error')})"
        bake["failed"] = f"GET {bad['path']} {what}"
        return Step(outcome=Outcome.FAILED, reason=f"{bake['failed']} {asked}", result={**base, "bake": bake})
    interval = ProbeInterval(task.release_id, task.stage, task.stage_run_id, config["url"], "bake",
                             task.started_at, now, tuple(dict(p) for p in probes))
    verdict = analyse(config, interval)
    analysis = {"latest": dict(verdict.details)} if verdict.details else {}
    if verdict.verdict is ProbeVerdict.FAIL:
        bake["failed"] = f"analysis: {verdict.evidence}"
        return Step(outcome=Outcome.FAILED, reason=f"analysis failed the bake {asked}: {verdict.evidence}",
                    result={**base, "bake": bake, "analysis": {**analysis, "fails": 1, "evidence": [verdict.evidence]}})
    if verdict.verdict is ProbeVerdict.PASS:
        return Step(outcome=Outcome.SUCCEEDED,
                    result={**base, "bake": bake, "analysis": {**analysis, "passes": 1, "last_pass": verdict.evidence}})
    planned_end = task.started_at + config["window_s"] + config["bake_s"]
    if now + config["interval_s"] >= planned_end:
        return Step()  # inconclusive to the end: the chain's own verdict decides, as if nobody asked
    asks = int(task.check.get("asks", 1)) + 1
    return Step(task=task.next(check={**task.check, "asks": asks, "evidence": verdict.evidence}),
                at=now + config["interval_s"])
