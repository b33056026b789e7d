"""Benchmark 4: a duplicate storm - 20 concurrent copies of one completion event.

Pub/Sub may hand the same message (same id) to many instances at once. Here 20
threads, released together by a barrier, each call ``Dispatcher.handle_message`` with
the one ``stage.finished`` of stage 1. The dispatcher is real, over the Firestore
emulator; the next stage is started by the real CloudBuildExecutor against the
in-process stand-in, so "exactly one transition" is checked where it matters: the
stand-in must hold exactly one build tagged with the next stage's run id.

Variants: the executor as it is (CreateBuild on loopback, a few ms), and the same
executor behind a 500 ms delay (a slow CreateBuild), during which every duplicate
finds the batch in flight and waits for it (up to 2 s) before acknowledging.
A copy is "acknowledged" when handle_message returns; raising would mean redelivery.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import (
    PROJECT,
    Report,
    emulators,
    flat_pipeline,
    log_dir,
    make_dispatcher,
    signed,
    new_commit,
    prefix,
    print_report,
    quiet,
    summary_ms,
)
from shared.app.config import Settings

COPIES = 20


class Delayed:
    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def start(self, pipeline, stage, command):
        time.sleep(self.delay_s)
        return self.inner.start(pipeline, stage, command)

    def poll(self, pipeline, stage, state):
        return self.inner.poll(pipeline, stage, state)


def storm(h, standin, delay_s: float) -> dict:
    from google.cloud import firestore

    from shared.adapters.executors import RetryPolicy, build_executors
    from shared.testing.fakes import FakePublisher
    from shared.adapters.firestore_store import FirestoreStore
    from shared.domain.events import Outcome, ReleaseStarted, StageFinished
    from shared.domain.gate import GateOutcome
    from shared.domain.wire import encode
    from shared.domain.state import StageStatus, new_release

    settings = Settings(project=PROJECT, collection_prefix=prefix("storm"), cloud_build_endpoint=standin.endpoint,
                        artifact_registry="local")
    store = FirestoreStore(firestore.Client(project=PROJECT), settings)
    pipeline = flat_pipeline(3)
    store.save_pipeline(pipeline)
    build = build_executors(settings, retry=RetryPolicy(initial_s=0.05, timeout_s=2))["build"]
    dispatcher = make_dispatcher(store, FakePublisher(), {"build": Delayed(build, delay_s)}, settings)
    state = new_release(pipeline, repo="bench/storm", ref="refs/heads/main", commit=new_commit(),
                        version="1.0.0", pushed_by="dev@example.com", now=time.time())
    assert store.create(state)
    rid = state.release_id
    dispatcher.handle_message(f"{rid}-start", {}, encode(ReleaseStarted("", rid))[0])
    completion, _ = encode(signed(StageFinished("", rid, "s01", f"{rid}.s01.a1", Outcome.SUCCEEDED)))
    barrier = threading.Barrier(COPIES)

    def copy(_):
        barrier.wait()
        t0 = time.perf_counter()
        try:
            outcome = dispatcher.handle_message(f"{rid}-storm", {}, completion).outcome.value
        except Exception as exc:  # noqa: BLE001 - would be a nack and a redelivery
            outcome = f"raised {type(exc).__name__}"
        return outcome, time.perf_counter() - t0

    with ThreadPoolExecutor(COPIES) as pool:
        results = list(pool.map(copy, range(COPIES)))
    final = store.get(rid)[0]
    builds = [b for b in standin.builds if f"run-{rid}.s02.a1" in b.tags]
    outcomes = [o for o, _ in results]
    return {
        "applied": outcomes.count(GateOutcome.APPLIED.value),
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "acked": sum(not o.startswith("raised") for o in outcomes),
        "latency": summary_ms([t for _, t in results]),
        "builds": len(builds),
        "state_ok": (final.stages["s01"].status is StageStatus.SUCCEEDED and final.stages["s02"].attempt == 1
                     and final.stages["s02"].status is StageStatus.RUNNING and not final.outbox
                     and final.applied_events.count(f"{rid}-storm") == 1),
    }


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    """``quick``: no warm-up storm and no storm with a slow start."""
    from local.standin.server import StandIn, StandInConfig

    quiet()
    report = Report()
    cfg = StandInConfig(project=PROJECT, local_images=frozenset(), log_dir=log_dir("standin-storm"))
    with emulators(hosts, kinds=("firestore",)) as h, StandIn(cfg) as standin:
        standin.set_outcome("build", "rel-", "HANG")  # builds stay running; nothing else happens to them
        if not quick:
            storm(h, standin, 0.0)  # warm-up
        for delay in (0.0,) if quick else (0.0, 0.5):
            r = storm(h, standin, delay)
            name = f"4 storm (start +{delay * 1000:.0f} ms)"
            report.add(name, f"{COPIES} copies -> transitions", f"{r['applied']}", "exactly 1", r["applied"] == 1,
                       f"outcomes {r['outcomes']}")
            report.add(name, "builds started for the next stage", f"{r['builds']}", "exactly 1", r["builds"] == 1)
            report.add(name, "copies acknowledged", f"{r['acked']}/{COPIES}", f"{COPIES}/{COPIES}", r["acked"] == COPIES)
            ok = r["latency"]["max"] <= 2000 and r["acked"] == COPIES
            report.add(name, "slowest acknowledgement", f"{r['latency']['max']:.0f} ms", "<= 2000 ms", ok,
                       f"p50 {r['latency']['p50']:.0f} ms")
            report.add(name, "release state afterwards", "consistent" if r["state_ok"] else "WRONG",
                       "s01 succeeded, s02 running a1, outbox empty", r["state_ok"])
    return report


def main() -> None:
    print_report("Benchmark 4: duplicate storm", run().rows)


if __name__ == "__main__":
    main()
