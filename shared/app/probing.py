"""The probe function's service: one short call per scheduled probe of a running stage.

A probe polls a job execution or a service rollout once (through the stage kind's
executor), or GETs a check's paths once and closes one interval of its analysis.
Then it either publishes ``stage.finished`` or schedules the next probe. It reads no
release document: the task carries what it needs (shared/domain/probes.py), and the
gate drops a finish of a run that is no longer current as stale.

Scheduling the first probe is ``follow``'s job, called by the dispatcher right after
an executor started a stage of a followed kind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from shared.app.config import Settings
from shared.app.ports import Clock, EventPublisher, HttpProber, ProbeScheduler, ReleaseStore, StageExecutor, StageFinish
from shared.domain.bake_skip import SKIP_PHASE, skip_step
from shared.domain.errors import ExecutorError, PipelineError
from shared.domain.events import Outcome, StageFinished
from shared.domain.probes import (
    CHECK_KIND,
    FOLLOWED_KINDS,
    ROLLBACK_KIND,
    IntervalAnalysis,
    ProbeTask,
    check_config,
    check_step,
    first_probe_task,
    no_analysis,
    paths_to_probe,
    poll_delay,
)
from shared.domain.commands import NoticeKind
from shared.domain.events import ReleaseNotice
from shared.domain.pipeline import StageKind
from shared.domain.state import StageState, StageStatus
from shared.domain.wire import from_payload

log = logging.getLogger(__name__)

PROBE_REQUEST_TIMEOUT_S = 10.0


def follow(scheduler: ProbeScheduler, *, release_id: str, stage: str, stage_run_id: str, kind: str,
           pipeline_digest: str, timeout_s: float, handle: Mapping[str, Any], now: float) -> ProbeTask | None:
    """Schedule the first probe of a stage run of a followed kind; None for other kinds."""
    if kind not in FOLLOWED_KINDS:
        return None
    task = first_probe_task(release_id=release_id, stage=stage, stage_run_id=stage_run_id, kind=kind,
                            pipeline_digest=pipeline_digest, now=now, timeout_s=timeout_s, handle=handle)
    # A check's first GET goes out at once (the deploy before it is already serving);
    # a poll waits for the first backoff step, since nothing ends in no time.
    scheduler.schedule(task, now if kind == CHECK_KIND else now + poll_delay(0))
    return task


@dataclass
class ProbeService:
    store: ReleaseStore  # only for the pinned pipeline definition (cached per instance)
    executors: Mapping[str, StageExecutor]
    publisher: EventPublisher
    scheduler: ProbeScheduler
    prober: HttpProber
    clock: Clock
    settings: Settings
    analyse: IntervalAnalysis = no_analysis

    def handle(self, task: ProbeTask) -> str:
        """Carry out one probe; returns what happened, for the log."""
        now = self.clock.now()
        if now > task.deadline:
            return f"{task.stage_run_id}: past the stage's deadline; the sweeper's tick fails it"
        if task.kind == CHECK_KIND:
            return self._check(task, now)
        return self._poll(task, now)

    def _poll(self, task: ProbeTask, now: float) -> str:
        pipeline = self.store.load_pipeline(task.pipeline_digest)
        stage = pipeline.stage(task.stage)
        running = StageState(status=StageStatus.RUNNING, stage_run_id=task.stage_run_id,
                             started_at=task.started_at, deadline=task.deadline, result=dict(task.handle))
        # A rollback by hand's rollout is a traffic change like any other.
        kind = StageKind.TRAFFIC.value if task.kind == ROLLBACK_KIND else task.kind
        try:
            finish = self.executors[kind].poll(pipeline, stage, running)
        except ExecutorError as exc:  # the stage cannot be observed any more: name the cause
            finish = StageFinish(Outcome.FAILED, str(exc))
        except PipelineError as exc:  # transient: the next probe tries again
            log.warning("probe %s of %s: %s", task.seq, task.stage_run_id, exc)
            finish = None
        if finish is not None and task.kind == ROLLBACK_KIND:
            return self._rollback_ended(task, finish)
        if finish is not None:
            self._publish(task, finish.outcome, finish.reason, dict(finish.result))
            return f"{task.stage_run_id}: {finish.outcome.value} (probe {task.seq})"
        nxt = task.next()
        if not self._schedule(task, nxt, now + poll_delay(nxt.seq)):
            return f"{task.stage_run_id}: the next probe was refused; the stage failed"
        return f"{task.stage_run_id}: still running; probe {nxt.seq} scheduled"

    def _rollback_ended(self, task: ProbeTask, finish: StageFinish) -> str:
        """The rollout of a rollback by hand ended: the rollback is recorded (the operator's event, landed)
        or, when the rollout failed, announced as not done."""
        if finish.outcome is Outcome.SUCCEEDED:
            self.publisher.publish(self.settings.events_topic, from_payload("", dict(task.handle["landed"])))
            return f"{task.stage_run_id}: rollout ended; rollback recorded"
        self.publisher.publish(self.settings.updates_topic, ReleaseNotice(
            task.release_id, NoticeKind.STAGE_FAILED, task.stage,
            f"rollback by hand {task.stage_run_id} did not land: {finish.reason}; traffic stays as Cloud Run shows it"))
        return f"{task.stage_run_id}: rollout failed: {finish.reason}"

    def _check(self, task: ProbeTask, now: float) -> str:
        config = check_config(task.handle)
        base = config["url"].rstrip("/")
        probes = []
        for path in paths_to_probe(task):
            answer = dict(self.prober.get(base + "/" + path.lstrip("/"), PROBE_REQUEST_TIMEOUT_S,
                                          audience=config["audience"]))
            probes.append({"path": path, "status": answer.get("status"), "latency_ms": answer.get("latency_ms"),
                           **({"error": answer["error"]} if answer.get("error") else {})})
        skip = task.check.get("phase") == SKIP_PHASE  # an approver asked to end the bake early
        step = (skip_step if skip else check_step)(task, probes, self.clock.now(), self.analyse)
        if step.outcome is not None:
            self._publish(task, step.outcome, step.reason, dict(step.result))
            return f"{task.stage_run_id}: check {step.outcome.value} after probe {task.seq}"
        if step.task is None or step.at is None:
            return f"{task.stage_run_id}: the bake stayed inconclusive; its own probes decide"
        if not self._schedule(task, step.task, step.at):
            return f"{task.stage_run_id}: the next probe was refused; the stage failed"
        return f"{task.stage_run_id}: check {step.task.check.get('phase', 'window')}, probe {step.task.seq} scheduled"

    def _schedule(self, task: ProbeTask, nxt: ProbeTask, at: float) -> bool:
        """Schedule the next probe; a refused one (ExecutorError: no permission, an invalid task) fails the
        stage naming why, since nothing would follow it (a retry of this probe would be refused again)."""
        try:
            self.scheduler.schedule(nxt, at)
            return True
        except ExecutorError as exc:
            log.warning("%s", exc)
            self._publish(task, Outcome.FAILED, f"the stage cannot be followed: {exc}", {})
            return False

    def _publish(self, task: ProbeTask, outcome: Outcome, reason: str, result: dict[str, Any]) -> None:
        self.publisher.publish(self.settings.events_topic, StageFinished(
            "", task.release_id, task.stage, task.stage_run_id, outcome, reason, result))
