"""The sweeper: runs every minute (Cloud Scheduler -> ``pipeline-tick``) and turns what
nobody announces into events.

* Cloud Run jobs and service rollouts send no completion event, and a Cloud Build
  notification can be lost: every RUNNING stage's executor is polled, and each finish
  found is published as ``stage.finished``. A finish already applied is dropped by
  the gate as stale, so publishing one twice is harmless.
* Deadlines are the gate's to enforce, but the gate only runs on an event: a release
  with a stage or an approval past its deadline gets a ``release.tick``.

It never writes release state itself; everything goes through the dispatcher.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

from shared.app.config import Settings
from shared.domain.errors import ExecutorError, PipelineError
from shared.domain.events import Outcome, StageFinished, Tick
from shared.app.ports import Clock, EventPublisher, ReleaseStore, StageExecutor, StageFinish
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500


@dataclass
class SweepReport:
    releases: int = 0  # active releases looked at
    polled: int = 0  # running stages polled
    finished: list[StageFinished] = field(default_factory=list)  # published stage.finished events
    ticks: list[str] = field(default_factory=list)  # release ids that got a release.tick
    errors: list[str] = field(default_factory=list)  # what could not be checked this time


def sweep(
    store: ReleaseStore,
    executors: Mapping[str, StageExecutor],
    publisher: EventPublisher,
    clock: Clock,
    settings: Settings,
    *,
    limit: int = DEFAULT_LIMIT,
) -> SweepReport:
    """One pass over the active releases; one failing release never stops the others."""
    report = SweepReport()
    now = clock.now()
    for release in store.list_active(limit=limit):
        report.releases += 1
        try:
            _sweep_release(release, store, executors, publisher, settings, now, report)
        except Exception as exc:  # noqa: BLE001 - keep sweeping the other releases
            log.exception("sweeping release %s failed", release.release_id)
            report.errors.append(f"release {release.release_id}: {exc}")
    return report


def _sweep_release(
    release: ReleaseState, store: ReleaseStore, executors: Mapping[str, StageExecutor],
    publisher: EventPublisher, settings: Settings, now: float, report: SweepReport,
) -> None:
    pipeline = store.load_pipeline(release.pipeline_digest)
    overdue = False
    for stage in pipeline.stages:
        st = release.stages.get(stage.id)
        if st is None:
            continue
        if is_overdue(release, st.status, st.deadline, now):
            overdue = True
        executor = executors.get(stage.kind.value)
        if st.status is not StageStatus.RUNNING or executor is None:
            continue
        report.polled += 1
        try:
            finish = executor.poll(pipeline, stage, st)
        except ExecutorError as exc:
            # Permanent: the stage cannot be observed any more (its execution is gone,
            # a permission is missing). Failing it names the cause; waiting would only
            # end in a timeout that names nothing.
            finish = StageFinish(Outcome.FAILED, str(exc))
        except PipelineError as exc:  # TransientError: try again on the next sweep
            report.errors.append(str(exc))
            continue
        if finish is None:
            continue
        event = StageFinished("", release.release_id, stage.id, st.stage_run_id, finish.outcome, finish.reason,
                              dict(finish.result))
        publisher.publish(settings.events_topic, event)
        report.finished.append(event)
    if overdue or release.status is ReleaseStatus.QUEUED:  # queued: ask for the lock again
        publisher.publish(settings.events_topic, Tick("", release.release_id))
        report.ticks.append(release.release_id)


def is_overdue(release: ReleaseState, status: StageStatus, deadline: float | None, now: float) -> bool:
    """The gate's own rule (gate._Run.expire_overdue): past the deadline while running,
    or while waiting for an approval the release is still waiting for."""
    if deadline is None or now <= deadline:
        return False
    if status is StageStatus.RUNNING:
        return True
    return status is StageStatus.WAITING and release.status is ReleaseStatus.AWAITING_APPROVAL
