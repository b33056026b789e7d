"""Benchmark 3: 50 releases at once through the dispatcher.

The dispatcher is the real one over the Firestore emulator (counted FirestoreStore);
what surrounds it is an in-process stand-in for Pub/Sub's at-least-once delivery:
a queue drained by WORKERS threads (as many concurrent function invocations), where
an invocation that raises is redelivered and, to make delivery as unkind as Pub/Sub's,
a share of the deliveries is delivered a second time (same event id) too.

Executors finish at once: ``start`` returns the stage's finish, which the dispatcher
publishes as ``stage.finished`` onto the queue before removing its outbox batch, so
completions routinely race the batch removal of the event that started them.

Checked after the run (the figures are printed, the checks are reported as met / not):
every release succeeded, every stage-run id was started exactly once, every release
applied exactly 16 events (release.started + 15 stage.finished) and no outbox is left.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import queue
import random
import threading
import time

from bench.common import (
    PROJECT,
    CountingStore,
    CpuMeter,
    Report,
    emulators,
    make_dispatcher,
    mixed_pipeline,
    new_commit,
    prefix,
    print_report,
    quiet,
)
from shared.app.config import Settings
from shared.domain.events import Outcome, ReleaseStarted
from shared.domain.wire import encode
from shared.app.ports import StageFinish
from shared.testing.fakes import FakeExecutor

RELEASES = 50
WORKERS = 16
DUPLICATE_SHARE = 0.10  # deliveries delivered once more with the same id
SEED = 7


class Bus:
    """At-least-once delivery: a queue, redelivery on error, some duplicates."""

    def __init__(self, events_topic: str, duplicate_share: float) -> None:
        self.events_topic = events_topic
        self.queue: queue.Queue = queue.Queue()
        self.ids = itertools.count(1)
        self.duplicate_share = duplicate_share
        self.random = random.Random(SEED)
        self.lock = threading.Lock()
        self.deliveries = 0
        self.duplicates = 0
        self.redeliveries = 0
        self.notices = 0

    # EventPublisher
    def publish(self, topic, message) -> str:
        if topic != self.events_topic:
            with self.lock:
                self.notices += 1
            return "notice"
        message_id = f"m{next(self.ids)}"
        self.queue.put((message_id, encode(message)[0]))
        return message_id

    def maybe_duplicate(self, message) -> None:
        with self.lock:
            dup = self.random.random() < self.duplicate_share
            if dup:
                self.duplicates += 1
        if dup:
            self.queue.put(message)


def instant_executor() -> FakeExecutor:
    """Every stage finishes at its start; starts are counted per stage-run id."""
    return FakeExecutor(finish_at_once=StageFinish(Outcome.SUCCEEDED, "", {"ok": True}))


WARMUP_RELEASES = 5  # run first and not counted: the emulator's JVM is slow until warm


def run(hosts: dict[str, str] | None = None, quick: bool = False, releases: int = RELEASES,
        workers: int = WORKERS) -> Report:
    """``quick``: 8 releases after 1 of warm-up (the same checks, a rough figure)."""
    if quick:
        releases = min(releases, 8)
    with emulators(hosts, kinds=("firestore",)) as h:
        _run(h, 1 if quick else WARMUP_RELEASES, workers)
        return _run(h, releases, workers)


def _run(hosts: dict[str, str], releases: int, workers: int) -> Report:
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore
    from shared.domain.gate import GateOutcome
    from shared.domain.state import ReleaseStatus, new_release

    quiet()
    report = Report()
    if True:
        settings = Settings(project=PROJECT, collection_prefix=prefix("many"))
        store = CountingStore(FirestoreStore(firestore.Client(project=PROJECT), settings))
        pipeline = mixed_pipeline()
        store.save_pipeline(pipeline)
        bus = Bus(settings.events_topic, DUPLICATE_SHARE)
        executor = instant_executor()
        dispatcher = make_dispatcher(store, bus, {s.kind.value: executor for s in pipeline.stages}, settings)
        ids = []
        for n in range(releases):
            state = new_release(pipeline, repo="bench/many", ref="refs/heads/main", commit=new_commit(),
                                version="1.0.0", pushed_by="dev@example.com", now=time.time())
            assert store.create(state)
            ids.append(state.release_id)
        reads0, writes0 = store.snapshot()
        outcomes: collections.Counter = collections.Counter()
        applied = collections.Counter()
        errors: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                try:
                    message = bus.queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    with bus.lock:
                        bus.deliveries += 1
                    decision = dispatcher.handle_message(message[0], {}, message[1])
                    with lock:
                        outcomes[decision.outcome.value] += 1
                        if decision.outcome is GateOutcome.APPLIED:
                            applied[json.loads(message[1])["release_id"]] += 1
                    bus.maybe_duplicate(message)
                except Exception as exc:  # noqa: BLE001 - a raised invocation is redelivered
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    with bus.lock:
                        bus.redeliveries += 1
                    bus.queue.put(message)
                finally:
                    bus.queue.task_done()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        cpu = CpuMeter()
        for rid in ids:
            bus.publish(settings.events_topic, ReleaseStarted("", rid))
        bus.queue.join()
        elapsed = time.perf_counter() - t0
        busy, own_cpu = cpu.busy_share(), cpu.own_s()
        stop.set()
        for t in threads:
            t.join()
        reads, writes = store.snapshot()
        finals = [store.inner.get(rid)[0] for rid in ids]

    expected_events = releases * (len(pipeline.stages) + 1)
    succeeded = sum(f.status is ReleaseStatus.SUCCEEDED for f in finals)
    starts_ok = (len(executor.starts) == releases * len(pipeline.stages) and set(executor.starts.values()) == {1})
    applied_ok = all(applied[rid] == len(pipeline.stages) + 1 for rid in ids)
    events_ok = all(len(f.applied_events) == len(pipeline.stages) + 1 for f in finals)
    outbox_ok = all(not f.outbox for f in finals)
    transitions = sum(applied.values())
    name = "3 concurrency"
    report.add(name, f"{releases} releases x {len(pipeline.stages)} stages, {workers} workers",
               f"{elapsed:.1f} s", "", None,
               f"{bus.deliveries} deliveries: {expected_events} events + {bus.duplicates} duplicates + "
               f"{bus.redeliveries} redeliveries after an error")
    report.add(name, "distinct events/s", f"{expected_events / elapsed:.0f}", ">= 100", expected_events / elapsed >= 100)
    report.add(name, "deliveries/s (with duplicates)", f"{bus.deliveries / elapsed:.0f}", "", None)
    report.add(name, "CPU: machine busy / this process per delivery", f"{busy:.0%} / {own_cpu / bus.deliveries * 1000:.1f} ms",
               "", None, f"{os.cpu_count()} cores shared by the dispatcher threads and the Firestore emulator's JVM")
    report.add(name, "releases succeeded", f"{succeeded}/{releases}", f"{releases}/{releases}", succeeded == releases)
    report.add(name, "starts per stage-run id", f"min {min(executor.starts.values())} max {max(executor.starts.values())} "
               f"over {len(executor.starts)} ids", "exactly 1 each", starts_ok)
    report.add(name, "transitions applied", f"{transitions}", f"{expected_events}", transitions == expected_events and applied_ok,
               "counted from APPLIED decisions per release")
    report.add(name, "applied events recorded, outbox empty", f"{'yes' if events_ok and outbox_ok else 'no'}",
               "16 per release, no outbox", events_ok and outbox_ok)
    report.add(name, "reads / writes per transition under contention",
               f"{(reads - reads0) / transitions:.2f} / {(writes - writes0) / transitions:.2f}", "", None,
               f"{store.stale} conditional writes refused (StaleWrite) and retried; outcomes {dict(outcomes)}; "
               f"errors: {collections.Counter(e.split(':')[0] for e in errors) or 'none'}")
    return report


def main() -> None:
    print_report("Benchmark 3: 50 releases at once", run().rows)


if __name__ == "__main__":
    main()
