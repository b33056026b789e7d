"""The sweeper: runs every minute (Cloud Scheduler -> ``pipeline-tick``) as the safety net.

Completions arrive as events (Cloud Build notifications, the probes of shared/app/probing.py);
the sweeper catches what those missed. It reads only releases that can need it now: one
range query on ``wake_at`` (shared/domain/wake.py), earliest first, page after page, so a
release waiting hours for an approval costs no read until its approval expires.

* A running stage whose wake time came (its probes went quiet, or a Cloud Build
  notification got lost) is polled once through its executor; a finish found is
  published as ``stage.finished`` (a second one is dropped by the gate as stale).
* A release with a stage or an approval past its deadline, a queued one, or one whose
  commands' lease ran out gets a ``release.tick``: the gate enforces deadlines, asks
  for the lock again, and the dispatcher carries out the orphaned commands.
* Each release looked at gets its next ``wake_at`` (a conditional write; a release that
  moved meanwhile has a fresh one already). So every due release is read once per sweep
  and then moves back in the order: none can starve the others.

Releases of one page are swept in parallel; the sweep stops taking new pages when its
time budget is spent, and the next tick starts again from the earliest.

* A release that has not moved for longer than its stage's timeout (shared/domain/stall.py)
  gets one ``stalled`` notice through the notifiers (and on ``release-updates``): the
  sweep records ``stall_announced_for`` in the same conditional write as ``wake_at``,
  and sends only once that write went through, so two overlapping sweeps send one.

It never writes release state besides ``wake_at`` and ``stall_announced_for`` (neither
moves ``updated_at``, which a stall is measured from); everything goes through the dispatcher.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from shared.app.config import Settings
from shared.domain.errors import ExecutorError, PipelineError, StaleWrite
from shared.domain.events import Outcome, ReleaseNotice, StageFinished, Tick
from shared.app.ports import Clock, EventPublisher, Notifier, ReleaseStore, StageExecutor, StageFinish
from shared.domain.stall import Stall, stall_notice, stall_to_announce
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus
from shared.domain.wake import next_wake

log = logging.getLogger(__name__)

PAGE_SIZE = 200
WORKERS = 16
# Cloud Scheduler's tick comes every 60 s and the function may run 540 s; stopping new
# pages after 45 s keeps two sweeps from overlapping much.
BUDGET_S = 45.0


@dataclass
class SweepReport:
    releases: int = 0  # due releases looked at
    polled: int = 0  # running stages polled
    pages: int = 0
    finished: list[StageFinished] = field(default_factory=list)  # published stage.finished events
    ticks: list[str] = field(default_factory=list)  # release ids that got a release.tick
    stalled: list[str] = field(default_factory=list)  # release ids whose stall was announced
    errors: list[str] = field(default_factory=list)  # what could not be checked this time
    out_of_time: bool = False  # pages were left for the next tick
    github_retried: int = 0  # releases whose GitHub reports were retried (shared/bootstrap.sweeper)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, value: Any) -> None:
        with self._lock:
            current = getattr(self, name)
            if isinstance(current, list):
                current.append(value)
            else:
                setattr(self, name, current + value)


def sweep(
    store: ReleaseStore,
    executors: Mapping[str, StageExecutor],
    publisher: EventPublisher,
    clock: Clock,
    settings: Settings,
    *,
    page_size: int = PAGE_SIZE,
    workers: int = WORKERS,
    budget_s: float = BUDGET_S,
    monotonic: Callable[[], float] = time.monotonic,
    notifier: Notifier | None = None,
) -> SweepReport:
    """One pass over the due releases; one failing release never stops the others.

    Without a ``notifier`` stalls are announced on ``release-updates`` only."""
    report = SweepReport()
    now = clock.now()
    began = monotonic()
    cursor: Any = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep") as pool:
        while True:
            page, cursor = store.list_due(now, page_size, cursor)
            report.pages += 1
            for done in [pool.submit(_sweep_one, release, token, store, executors, publisher, settings, now, report,
                                     notifier) for release, token in page]:
                done.result()
            if cursor is None:
                break
            if monotonic() - began > budget_s:
                report.out_of_time = True
                break
    return report


def _sweep_one(release: ReleaseState, token: Any, store: ReleaseStore, executors: Mapping[str, StageExecutor],
               publisher: EventPublisher, settings: Settings, now: float, report: SweepReport,
               notifier: Notifier | None) -> None:
    report.add("releases", 1)
    stalled: Stall | None = None
    try:
        stalled = _sweep_release(release, store, executors, publisher, settings, now, report)
    except Exception as exc:  # noqa: BLE001 - keep sweeping the other releases
        log.exception("sweeping release %s failed", release.release_id)
        report.add("errors", f"release {release.release_id}: {exc}")
    live = [b for b in release.outbox if b["lease_until"] > now]  # expired ones: the tick recovers them
    fields: dict[tuple[str, ...], Any] = {("wake_at",): next_wake(release, now, live)}
    if stalled is not None:
        fields[("stall_announced_for",)] = stalled.key
    try:
        store.update_fields(release.release_id, fields, token)
    except StaleWrite:
        return  # the release moved meanwhile (no stall any more); its write set a fresh wake_at
    except PipelineError as exc:
        report.add("errors", f"release {release.release_id}: wake_at not moved: {exc}")
        return
    if stalled is not None:
        _announce(release, stalled, publisher, notifier, settings, report)


def _announce(release: ReleaseState, stalled: Stall, publisher: EventPublisher, notifier: Notifier | None,
              settings: Settings, report: SweepReport) -> None:
    """Sent after the marker is written: a notice lost here is logged, never sent twice."""
    notice = stall_notice(release, stalled)
    report.add("stalled", release.release_id)
    try:
        publisher.publish(settings.updates_topic, ReleaseNotice.of(notice))
        if notifier is not None:
            notifier.notify(release, notice)
    except Exception as exc:  # noqa: BLE001 - the other releases are still swept
        log.exception("stall notice for release %s not sent", release.release_id)
        report.add("errors", f"release {release.release_id}: stall notice not sent: {exc}")


def _sweep_release(
    release: ReleaseState, store: ReleaseStore, executors: Mapping[str, StageExecutor],
    publisher: EventPublisher, settings: Settings, now: float, report: SweepReport,
) -> Stall | None:
    """Polls, ticks; returns the stall to announce, if any."""
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
        report.add("polled", 1)
        try:
            finish = executor.poll(pipeline, stage, st)
        except ExecutorError as exc:
            # Permanent: the stage cannot be observed any more (its execution is gone,
            # a permission is missing). Failing it names the cause; waiting would only
            # end in a timeout that names nothing.
            finish = StageFinish(Outcome.FAILED, str(exc))
        except PipelineError as exc:  # TransientError: try again on the next sweep
            report.add("errors", str(exc))
            continue
        if finish is None:
            continue
        event = StageFinished("", release.release_id, stage.id, st.stage_run_id, finish.outcome, finish.reason,
                              dict(finish.result))
        publisher.publish(settings.events_topic, event)
        report.add("finished", event)
    orphaned = any(batch["lease_until"] <= now for batch in release.outbox)
    if overdue or orphaned or release.status is ReleaseStatus.QUEUED:  # queued: ask for the lock again
        publisher.publish(settings.events_topic, Tick("", release.release_id))
        report.add("ticks", release.release_id)
    return stall_to_announce(release, pipeline, now)


def is_overdue(release: ReleaseState, status: StageStatus, deadline: float | None, now: float) -> bool:
    """The gate's own rule (gate_flow.expire_overdue): past the deadline while running,
    or while waiting for an approval the release is still waiting for."""
    if deadline is None or now <= deadline:
        return False
    if status is StageStatus.RUNNING:
        return True
    return status is StageStatus.WAITING and release.status is ReleaseStatus.AWAITING_APPROVAL
