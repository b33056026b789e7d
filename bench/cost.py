"""Benchmark 5: Firestore reads and writes per transition, counted on a real store.

``CountingStore`` wraps the real FirestoreStore (over the emulator) and counts the
document reads and writes the dispatcher asks of it; nothing is faked below it.
Events are delivered one at a time (no contention; benchmark 3 shows the figure
under contention), in the order a release meets them:

* applied transitions that issue commands (release.started, stage.finished);
* a redelivery of an event already applied (duplicate);
* a stale completion (an attempt that is not the current one).

The pipeline definition is read once per function instance (cached by digest) and
is counted separately, not per transition. Environment locks are not exercised
(the bench pipeline names no environment); a stage that takes a lock adds the lock
document's own read and write.
"""
from __future__ import annotations

import time

from bench.common import (
    PROJECT,
    CountingStore,
    Report,
    emulators,
    make_dispatcher,
    signed,
    mixed_pipeline,
    new_commit,
    prefix,
    print_report,
    quiet,
)
from shared.app.config import Settings
from shared.domain.events import Outcome, ReleaseStarted, StageFinished
from shared.domain.wire import encode


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    """``quick`` changes nothing: one release of 15 stages is already a few seconds."""
    from google.cloud import firestore

    from shared.testing.fakes import FakeExecutor, FakePublisher
    from shared.adapters.firestore_store import FirestoreStore
    from shared.domain.state import new_release

    quiet()
    report = Report()
    with emulators(hosts, kinds=("firestore",)):
        settings = Settings(project=PROJECT, collection_prefix=prefix("cost"))
        raw = FirestoreStore(firestore.Client(project=PROJECT), settings)
        pipeline = mixed_pipeline()
        raw.save_pipeline(pipeline)
        raw._pipeline_cache.clear()  # a fresh instance: the first event reads the definition
        store = CountingStore(raw)

        dispatcher = make_dispatcher(store, FakePublisher(), {s.kind.value: FakeExecutor() for s in pipeline.stages}, settings)
        state = new_release(pipeline, repo="bench/cost", ref="refs/heads/main", commit=new_commit(),
                            version="1.0.0", pushed_by="dev@example.com", now=time.time())
        assert raw.create(state)
        rid = state.release_id
        counts: dict[str, list[tuple[int, int]]] = {"applied": [], "duplicate": [], "stale": [], "pipeline": []}

        def send(kind: str, event_id: str, event) -> None:
            r0, w0 = store.snapshot()
            dispatcher.handle_message(event_id, *reversed(encode(event)))
            r1, w1 = store.snapshot()
            counts[kind].append((r1 - r0, w1 - w0))

        def finished(stage: str, attempt: int = 1) -> StageFinished:
            return signed(StageFinished("", rid, stage, f"{rid}.{stage}.a{attempt}", Outcome.SUCCEEDED))

        send("pipeline", "e0", ReleaseStarted("", rid))  # includes the definition read
        for i, stage in enumerate(pipeline.stages):
            send("applied", f"e{i + 1}", finished(stage.id))
            if i % 5 == 0:
                send("duplicate", f"e{i + 1}", finished(stage.id))
                send("stale", f"stale{i}", finished(stage.id, attempt=9))

    def per(kind):
        pairs = counts[kind]
        return sum(r for r, _ in pairs) / len(pairs), sum(w for _, w in pairs) / len(pairs), len(pairs)

    r, w, n = per("applied")
    report.add("5 cost", "applied transition: reads", f"{r:.2f}", "<= 1", r <= 1, f"n={n} (each issues a start command)")
    report.add("5 cost", "applied transition: writes", f"{w:.2f}", "<= 2", w <= 2,
               "state + outbox in one conditional write, then the batch removal")
    for kind, label in (("duplicate", "redelivered duplicate"), ("stale", "stale completion")):
        r, w, n = per(kind)
        report.add("5 cost", f"{label}: reads / writes", f"{r:.2f} / {w:.2f}", "", None, f"n={n}")
    (r, w), = counts["pipeline"]
    report.add("5 cost", "first event of an instance: reads / writes", f"{r} / {w}", "", None,
               "one extra read: the pinned pipeline definition, then cached by digest")
    return report


def main() -> None:
    print_report("Benchmark 5: Firestore cost per transition", run().rows)


if __name__ == "__main__":
    main()
