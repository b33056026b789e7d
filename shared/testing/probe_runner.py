"""Runs scheduled probes in-process: what Cloud Tasks does, for tests without an HTTP hop.

With a FakeClock it jumps to each probe's time; with a real clock it sleeps until then.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from shared.app.ports import StageExecutor
from shared.app.probing import ProbeService, follow
from shared.domain.commands import StartStage
from shared.domain.pipeline import Pipeline
from shared.testing.fakes import FakeProbeScheduler


def run_due(service: ProbeService, scheduler: FakeProbeScheduler, now: float) -> int:
    """Carry out every probe due at ``now``; how many ran."""
    due = scheduler.take_due(now)
    for task in due:
        service.handle(task)
    return len(due)


def run_stage(service: ProbeService, scheduler: FakeProbeScheduler, executor: StageExecutor, pipeline: Pipeline,
              command: StartStage, *, timeout_s: float = 60,
              advance: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Start the stage, follow it with probes until one publishes its finish; that finish.

    ``advance(seconds)`` moves a fake clock; without it the runner sleeps in real time."""
    started = executor.start(pipeline, pipeline.stage(command.stage), command)
    assert started.finished is None, "a followed stage finishes through its probes"
    follow(scheduler, release_id=command.release_id, stage=command.stage, stage_run_id=command.stage_run_id,
           kind=command.kind, pipeline_digest=pipeline.digest, timeout_s=pipeline.stage(command.stage).timeout_s,
           handle=started.handle, now=service.clock.now())
    published = service.publisher.messages  # type: ignore[attr-defined]  # a FakePublisher
    limit = time.monotonic() + timeout_s
    while time.monotonic() < limit:
        mine = [d for _, d, _ in published if d.get("stage_run_id") == command.stage_run_id
                and d.get("type") == "stage.finished"]
        if mine:
            return mine[0]
        at = scheduler.next_at()
        if at is None:
            raise AssertionError(f"the probes of {command.stage_run_id} stopped without a finish")
        wait = at - service.clock.now()
        if wait > 0:
            advance(wait) if advance else time.sleep(wait)
        run_due(service, scheduler, service.clock.now())
    raise AssertionError(f"no finish of {command.stage_run_id} within {timeout_s}s")
