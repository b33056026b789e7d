"""Fakes of the ports that behave like the real adapters, for unit tests.

They keep the same contracts: create-only records refuse a second create, a stale
update raises StaleWrite, published messages get ids, executors are idempotent per
stage-run id. A fake that is kinder than the real thing hides bugs.
"""
from __future__ import annotations

import copy
import itertools
import json
import threading
from typing import Any, Mapping

from shared.domain.commands import Notify, RequestApproval, StartStage
from shared.domain.errors import DefinitionError, StaleWrite
from shared.domain.pipeline import Pipeline, Stage, parse_pipeline, thaw
from shared.app.ports import StageFinish, StartResult
from shared.domain.state import ReleaseState, StageState


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[dict, int]] = {}
        self._pipelines: dict[str, str] = {}
        self._parsed: dict[str, Pipeline] = {}
        self.dead_letters: dict[str, dict] = {}
        self.deliveries: dict[str, dict] = {}
        self.reads = 0
        self.writes = 0

    def get(self, release_id: str):
        with self._lock:
            self.reads += 1
            if release_id not in self._docs:
                return None
            data, version = self._docs[release_id]
            return ReleaseState.from_dict(copy.deepcopy(data)), version

    def create(self, state: ReleaseState) -> bool:
        with self._lock:
            if state.release_id in self._docs:
                return False
            self.writes += 1
            self._docs[state.release_id] = (state.to_dict(), 1)
            return True

    def update(self, state: ReleaseState, token: Any) -> Any:
        with self._lock:
            _, version = self._docs[state.release_id]
            if version != token:
                raise StaleWrite("release changed since it was read", release_id=state.release_id)
            self.writes += 1
            self._docs[state.release_id] = (state.to_dict(), version + 1)
            return version + 1

    def update_fields(self, release_id: str, fields: Mapping[tuple[str, ...], Any], token: Any) -> Any:
        with self._lock:
            data, version = self._docs[release_id]
            if version != token:
                raise StaleWrite("release changed since it was read", release_id=release_id)
            data = copy.deepcopy(data)
            for path, value in fields.items():
                target = data
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = copy.deepcopy(value)
            self.writes += 1
            self._docs[release_id] = (data, version + 1)
            return version + 1

    def list_releases(self, limit: int = 50) -> list[ReleaseState]:
        with self._lock:
            states = [ReleaseState.from_dict(copy.deepcopy(d)) for d, _ in self._docs.values()]
        return sorted(states, key=lambda s: s.created_at, reverse=True)[:limit]

    def list_active(self, limit: int = 500) -> list[ReleaseState]:
        active = ("running", "queued", "awaiting_approval")
        return [s for s in self.list_releases(limit=10**6) if s.status.value in active][:limit]

    def released_versions(self, repo: str) -> list[str]:
        return [s.version for s in self.list_releases(limit=10**6) if s.repo == repo and s.status.value == "succeeded"]

    def save_pipeline(self, pipeline: Pipeline) -> None:
        self._pipelines[pipeline.digest] = json.dumps(thaw(pipeline.document))

    def load_pipeline(self, digest: str) -> Pipeline:
        if digest not in self._pipelines:
            raise DefinitionError(f"pipeline {digest[:12]} is not stored")
        if digest not in self._parsed:  # cached like the Firestore store does
            self._parsed[digest] = parse_pipeline(json.loads(self._pipelines[digest]))
        return self._parsed[digest]

    def record_dead_letter(self, event_id: str, reason: str, payload: str, source: str) -> None:
        self.dead_letters.setdefault(event_id, {"reason": reason, "payload": payload, "source": source})

    def claim_delivery(self, delivery_id: str, info: Mapping[str, Any]) -> bool:
        with self._lock:
            if delivery_id in self.deliveries:
                return False
            self.deliveries[delivery_id] = dict(info)
            return True


class FakePublisher:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict, dict]] = []
        self._ids = itertools.count(1)

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str] | None = None) -> str:
        self.messages.append((topic, dict(data), dict(attributes or {})))
        return f"msg-{next(self._ids)}"

    def of_type(self, event_type: str) -> list[dict]:
        return [data for _, data, _ in self.messages if data.get("type") == event_type]


class FakeExecutor:
    """Records starts; idempotent per stage-run id like the real executors."""

    def __init__(self, finish_at_once: StageFinish | None = None) -> None:
        self.started: dict[str, StartStage] = {}
        self.start_calls = 0
        self.finish_at_once = finish_at_once
        self.poll_results: dict[str, StageFinish] = {}

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        self.start_calls += 1
        self.started.setdefault(command.stage_run_id, command)
        return StartResult(handle={"fake_run": command.stage_run_id}, finished=self.finish_at_once)

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        return self.poll_results.get(state.stage_run_id)


class FakeApprovals:
    """Confirms only decisions the test recorded with ``confirm``, like the real link records."""

    def __init__(self) -> None:
        self.requests: list[RequestApproval] = []
        self.confirmed: set[str] = set()

    def request(self, release: ReleaseState, command: RequestApproval) -> Mapping[str, Any]:
        self.requests.append(command)
        return {"links_sent": len(command.approvers)}

    def confirm(self, nonce: str) -> None:
        self.confirmed.add(nonce)

    def unconfirmed(self, event) -> str:
        return "" if event.nonce in self.confirmed else f"no approval request {event.nonce} was issued"


class FakeNotifier:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, release: ReleaseState, notice: Notify) -> None:
        self.notices.append(notice)


class FakeProbeScheduler:
    """Keeps scheduled probes in memory; refuses a task id twice, as Cloud Tasks does.

    Tests (and in-process benchmarks) run what is due with ``take_due``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending: dict[str, tuple[float, Any]] = {}
        self.seen: set[str] = set()
        self.scheduled = 0

    def schedule(self, task, at: float) -> bool:
        with self._lock:
            if task.task_id in self.seen:
                return False
            self.seen.add(task.task_id)
            self.pending[task.task_id] = (at, task)
            self.scheduled += 1
            return True

    def next_at(self) -> float | None:
        with self._lock:
            return min((at for at, _ in self.pending.values()), default=None)

    def take_due(self, now: float) -> list:
        with self._lock:
            due = sorted((at, tid) for tid, (at, _) in self.pending.items() if at <= now)
            return [self.pending.pop(tid)[1] for _, tid in due]


class FakeTelemetry:
    """The Telemetry port from canned measurements, or raising what a client would raise."""

    def __init__(self, measurements=None, error: Exception | None = None):
        self.measurements = measurements
        self.error = error
        self.calls: list[tuple] = []

    def measure(self, criteria, target, start, end):
        self.calls.append((criteria, target, start, end))
        if self.error is not None:
            raise self.error
        return self.measurements
