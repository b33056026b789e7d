"""Benchmark 1: dispatcher overhead per event, from the event arriving to the commands issued.

(a) In-process: ``Dispatcher.handle_message`` over the Firestore emulator with a fake
    executor that notes when ``start`` is called. Two figures per event:
    "to commands issued" (call -> executor.start entered: read, decide, the one
    conditional write with the outbox) and "whole handler" (until the batch is removed,
    i.e. until the function would return and Pub/Sub get its ack).
(b) The deployed entry point: the functions-framework test client of ``dispatch``
    (CloudEvent in binary mode, as Eventarc delivers Pub/Sub), wired by shared.bootstrap
    exactly as on GCP, with the real CloudBuildExecutor talking gRPC to the in-process
    stand-in. Figure: HTTP request -> response (everything, including ListBuilds +
    CreateBuild on the stand-in).

Events: per release, ``release.started`` then one ``stage.finished`` per stage of a
15-stage pipeline; each event starts the next stage. The first release is warm-up.
"""
from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

from bench.common import (
    APPROVAL_KEYS,
    PROJECT,
    Report,
    emulators,
    ensure_topics,
    flat_pipeline,
    log_dir,
    make_dispatcher,
    signed,
    mixed_pipeline,
    prefix,
    print_report,
    quiet,
    summary_ms,
)
from shared.app.config import Settings
from shared.app.ports import StartResult
from shared.domain.events import Outcome, ReleaseStarted, StageFinished
from shared.domain.wire import encode

RELEASES = 15  # x 16 events each
WARMUP = 4  # releases first run and not counted: the emulator's JVM and the gRPC channels warm up
QUICK = {"releases": 2, "warmup": 1}  # --quick: proves the paths run, figures are rough


class TimedExecutor:
    """A fake executor that records when each start was issued (perf_counter)."""

    def __init__(self) -> None:
        self.issued_at: dict[str, float] = {}

    def start(self, pipeline, stage, command) -> StartResult:
        self.issued_at.setdefault(command.stage_run_id, time.perf_counter())
        return StartResult(handle={"fake": command.stage_run_id})

    def poll(self, pipeline, stage, state):
        return None


def _events(release_id: str, pipeline) -> list[tuple[str, bytes, dict[str, str]]]:
    """(stage-run id the event starts, data, attributes) in order."""
    out = [(f"{release_id}.{pipeline.stages[0].id}.a1", *encode(ReleaseStarted("", release_id)))]
    for i, stage in enumerate(pipeline.stages):
        nxt = pipeline.stages[i + 1].id if i + 1 < len(pipeline.stages) else ""
        finished = signed(StageFinished("", release_id, stage.id, f"{release_id}.{stage.id}.a1", Outcome.SUCCEEDED))
        out.append((f"{release_id}.{nxt}.a1" if nxt else "", *encode(finished)))
    return out


def _new_release(store, pipeline, n: int, clock_now: float) -> str:
    from shared.domain.state import new_release

    state = new_release(pipeline, repo="bench/app", ref="refs/heads/main", commit=f"{n:012x}{'0' * 28}",
                        version="1.0.0", pushed_by="dev@example.com", now=clock_now)
    store.save_pipeline(pipeline)
    assert store.create(state), "release exists"
    return state.release_id


def in_process(hosts: dict[str, str], releases: int = RELEASES, warmup: int = WARMUP) -> dict[str, Any]:
    from google.cloud import firestore

    from shared.testing.fakes import FakePublisher
    from shared.adapters.firestore_store import FirestoreStore

    settings = Settings(project=PROJECT, collection_prefix=prefix("overhead"))
    store = FirestoreStore(firestore.Client(project=PROJECT), settings)
    executor = TimedExecutor()
    pipeline = mixed_pipeline()
    executors = {s.kind.value: executor for s in pipeline.stages}
    dispatcher = make_dispatcher(store, FakePublisher(), executors, settings)
    to_issue, whole = [], []
    for r in range(-warmup, releases):
        rid = _new_release(store, pipeline, r + warmup, time.time())
        for n, (run_id, data, attributes) in enumerate(_events(rid, pipeline)):
            t0 = time.perf_counter()
            dispatcher.handle_message(f"{rid}-e{n}", attributes, data)
            t1 = time.perf_counter()
            if r < 0:
                continue
            whole.append(t1 - t0)
            if run_id:
                to_issue.append(executor.issued_at[run_id] - t0)
    return {"to_issue": summary_ms(to_issue), "whole": summary_ms(whole)}


def through_function(hosts: dict[str, str], releases: int = RELEASES, warmup: int = WARMUP) -> dict[str, Any]:
    """The deployed `dispatch` entry point through functions-framework's test client."""
    from functions_framework import create_app

    from local.standin.server import StandIn, StandInConfig
    from shared import bootstrap

    col = prefix("fn")
    pipeline = flat_pipeline(15)
    cfg = StandInConfig(project=PROJECT, local_images=frozenset(), log_dir=log_dir("standin-overhead"))
    env = {"RELEASE_PROJECT": PROJECT, "RELEASE_COLLECTION_PREFIX": col, "RELEASE_APPROVAL_KEYS": APPROVAL_KEYS,
           "RELEASE_ARTIFACT_REGISTRY": "local"}
    saved = {k: os.environ.get(k) for k in list(env) + ["RELEASE_CLOUD_BUILD_ENDPOINT"]}
    with StandIn(cfg) as standin:
        standin.set_outcome("build", "rel-", "SUCCESS")  # ends at once; no Pub/Sub: no notification
        os.environ.update(env, RELEASE_CLOUD_BUILD_ENDPOINT=standin.endpoint)
        bootstrap.reset()
        ensure_topics(PROJECT, "release-updates", "pipeline-events")  # the last event publishes a notice
        try:
            client = create_app("dispatch", "functions/main.py").test_client()
            quiet()
            store = bootstrap.store()
            latencies = []
            for r in range(-warmup, releases):
                rid = _new_release(store, pipeline, 1000 + r + warmup, time.time())
                for n, (_, data, attributes) in enumerate(_events(rid, pipeline)):
                    body = {"message": {"data": base64.b64encode(data).decode(),
                                        "messageId": f"{rid}-m{n}", "attributes": attributes},
                            "subscription": f"projects/{PROJECT}/subscriptions/pipeline-events-to-dispatch"}
                    headers = {"ce-id": f"{rid}-m{n}", "ce-specversion": "1.0",
                               "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/pipeline-events",
                               "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                               "Content-Type": "application/json"}
                    t0 = time.perf_counter()
                    response = client.post("/", data=json.dumps(body), headers=headers)
                    took = time.perf_counter() - t0
                    if response.status_code != 200:
                        raise RuntimeError(f"dispatch answered {response.status_code}: {response.get_data()[:300]}")
                    if r >= 0:
                        latencies.append(took)
            final = store.get(rid)[0]
            builds = len(standin.builds)
        finally:
            bootstrap.reset()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return {"request": summary_ms(latencies), "final_status": final.status.value, "builds": builds,
            "expected_builds": (releases + warmup) * len(pipeline.stages)}


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    report = Report()
    scale = QUICK if quick else {"releases": RELEASES, "warmup": WARMUP}
    with emulators(hosts) as h:
        a = in_process(h, **scale)
        b = through_function(h, **scale)
    name = "1 overhead"
    for label, s in (("in-process, event -> commands issued", a["to_issue"]),
                     ("in-process, whole handler (+ batch removal)", a["whole"])):
        report.add(name, f"{label} p50", f"{s['p50']:.1f} ms", "<= 30 ms", s["p50"] <= 30, f"n={s['n']}, max {s['max']:.1f} ms")
        report.add(name, f"{label} p99", f"{s['p99']:.1f} ms", "<= 100 ms", s["p99"] <= 100)
    s = b["request"]
    note = (f"n={s['n']}; real CloudBuildExecutor (ListBuilds + CreateBuild on the stand-in); "
            f"last release {b['final_status']}, {b['builds']}/{b['expected_builds']} builds")
    report.add(name, "dispatch() via functions-framework p50", f"{s['p50']:.1f} ms", "<= 30 ms", s["p50"] <= 30, note)
    report.add(name, "dispatch() via functions-framework p99", f"{s['p99']:.1f} ms", "<= 100 ms", s["p99"] <= 100)
    return report


def main() -> None:
    print_report("Benchmark 1: dispatcher overhead per event", run().rows)


if __name__ == "__main__":
    main()
