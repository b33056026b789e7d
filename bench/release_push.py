"""Benchmark 2: orchestration overhead of a whole release through real push subscriptions.

Set-up (LocalStack's shape, trimmed to what a release of instant stages needs):
* the Firestore and Pub/Sub emulators;
* the `dispatch` function in its own functions-framework process, wired by
  shared.bootstrap as deployed, behind real Pub/Sub push subscriptions from
  `pipeline-events` and `cloud-builds`;
* the stand-in (Cloud Build API on loopback gRPC) in this process, with an outcome
  rule that makes every build succeed the moment it is created and publish its
  QUEUED / WORKING / SUCCESS notifications on `cloud-builds`, as Cloud Build does.

The release: 15 build stages (the 16 stages of the shipped flow without the approval,
which waits for a human). Every hop is real: push -> dispatch -> Firestore read/write ->
CreateBuild on the stand-in -> notification -> Pub/Sub -> push -> dispatch ...

Measured: from publishing `release.started` to the write that marks the release
succeeded (its `updated_at`, stamped by the function's clock on this same machine),
so the figure is orchestration only: no stage does any work.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    APPROVAL_KEYS,
    PROJECT,
    Report,
    emulators,
    ensure_topics,
    flat_pipeline,
    log_dir,
    new_commit,
    prefix,
    print_report,
)
from shared.app.config import REPO_ROOT, Settings

RELEASES = 4  # run one after another; the first is warm-up
STAGES = 15


def start_dispatch(env: dict[str, str], logs: Path) -> tuple[subprocess.Popen, str]:
    from local.emulators import free_port, wait_port

    port = free_port()
    args = [str(Path(sys.executable).parent / "functions-framework"), "--target", "dispatch",
            "--source", str(REPO_ROOT / "functions" / "main.py"), "--signature-type", "cloudevent",
            "--host", "127.0.0.1", "--port", str(port)]
    log = logs / "dispatch.log"
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    wait_port("127.0.0.1", port, 60, proc, log)
    return proc, f"http://127.0.0.1:{port}/"


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def push_subscriptions(project: str, endpoint: str, suffix: str, topics: tuple[str, ...]) -> list[str]:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    names = []
    for topic in topics:
        path = subscriber.subscription_path(project, f"{topic}-to-dispatch-{suffix}")
        subscriber.create_subscription(request={
            "name": path, "topic": subscriber.topic_path(project, topic),
            "push_config": {"push_endpoint": endpoint}, "ack_deadline_seconds": 60})
        names.append(path)
    return names


def emulator_push_latency(project: str, topic: str, n: int = 20) -> list[float]:
    """Calibration: publish (unbatched) -> push request received by a bare HTTP endpoint."""
    import http.server
    import threading

    from google.cloud import pubsub_v1

    received: dict[str, float] = {}

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.setdefault(body["message"]["attributes"]["i"], time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, f"{topic}-calibration")
    subscriber.create_subscription(request={"name": path, "topic": subscriber.topic_path(project, topic),
                                            "push_config": {"push_endpoint": f"http://127.0.0.1:{server.server_port}/"}})
    publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
    sent = {}
    try:
        for i in range(n):
            sent[str(i)] = time.time()
            publisher.publish(subscriber.topic_path(project, topic), b"{}", i=str(i)).result(10)
            time.sleep(0.1)
        time.sleep(1)
    finally:
        subscriber.delete_subscription(subscription=path)
        server.shutdown()
    return [received[k] - sent[k] for k in sent if k in received]


def run(hosts: dict[str, str] | None = None) -> Report:
    from google.cloud import firestore, pubsub_v1

    from local.standin.server import StandIn, StandInConfig
    from shared.adapters.firestore_store import FirestoreStore
    from shared.domain.events import ReleaseStarted
    from shared.domain.state import ReleaseStatus, new_release
    from shared.domain.wire import encode

    report = Report()
    logs = log_dir("release_push")
    with emulators(hosts) as h:
        col = prefix("push")
        suffix = col.strip("_").rsplit("_", 1)[-1]
        topics = {"events": f"pipeline-events-{suffix}", "builds": f"cloud-builds-{suffix}",
                  "updates": f"release-updates-{suffix}"}
        ensure_topics(PROJECT, *topics.values())
        settings = Settings(project=PROJECT, collection_prefix=col)
        store = FirestoreStore(firestore.Client(project=PROJECT), settings)
        pipeline = flat_pipeline(STAGES)
        store.save_pipeline(pipeline)
        cfg = StandInConfig(project=PROJECT, local_images=frozenset(), pubsub_emulator_host=h["pubsub"],
                            builds_topic=topics["builds"], log_dir=logs / "standin")
        with StandIn(cfg) as standin:
            standin.set_outcome("build", "rel-", "SUCCESS")
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RELEASE_PROJECT": PROJECT,
                   "RELEASE_COLLECTION_PREFIX": col, "RELEASE_APPROVAL_KEYS": APPROVAL_KEYS,
                   "RELEASE_EVENTS_TOPIC": topics["events"], "RELEASE_UPDATES_TOPIC": topics["updates"],
                   "RELEASE_BUILDS_TOPIC": topics["builds"], "RELEASE_CLOUD_BUILD_ENDPOINT": standin.endpoint,
                   "RELEASE_ARTIFACT_REGISTRY": "local"}
            proc, url = start_dispatch(env, logs)
            subscriber = pubsub_v1.SubscriberClient()
            subs = push_subscriptions(PROJECT, url, suffix, (topics["events"], topics["builds"]))
            publisher = pubsub_v1.PublisherClient()
            totals, hops, to_build_end, to_decided = [], [], [], []
            try:
                for r in range(RELEASES):
                    state = new_release(pipeline, repo="bench/push", ref="refs/heads/main",
                                        commit=new_commit(), version="1.0.0",
                                        pushed_by="dev@example.com", now=time.time())
                    assert store.create(state)
                    t0 = time.time()
                    data, attributes = encode(ReleaseStarted("", state.release_id))
                    publisher.publish(publisher.topic_path(PROJECT, topics["events"]), data, **attributes).result(10)
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        final = store.get(state.release_id)[0]
                        if final.status is not ReleaseStatus.RUNNING:
                            break
                        time.sleep(0.05)
                    if final.status is not ReleaseStatus.SUCCEEDED:
                        raise RuntimeError(f"release {state.release_id} ended {final.status.value}: see {logs}")
                    if r == 0:
                        continue
                    totals.append(final.updated_at - t0)
                    starts = [final.stages[s.id].started_at for s in pipeline.stages]
                    first_hop = starts[0] - t0
                    hops.extend(b - a for a, b in zip(starts, starts[1:]))
                    report.add("2 release", f"release {r}: all {STAGES} stages", f"{totals[-1]:.2f} s", "<= 2 s",
                               totals[-1] <= 2.0, f"publish -> first stage started {first_hop * 1000:.0f} ms")
                    # Split each hop at the build's end as the stand-in stamped it.
                    ended = {next(t for t in b.tags if t.startswith("run-"))[4:]: b.finish_time.timestamp()
                             for b in standin.builds if f"rel-{state.release_id}" in b.tags}
                    for s in pipeline.stages:
                        st = final.stages[s.id]
                        to_build_end.append(ended[st.stage_run_id] - st.started_at)
                        to_decided.append(st.finished_at - ended[st.stage_run_id])
                builds = len(standin.builds)
            finally:
                for sub in subs:
                    subscriber.delete_subscription(subscription=sub)
                stop_process(proc)
        median = statistics.median(totals)
        report.add("2 release", f"median of {len(totals)} releases", f"{median:.2f} s", "<= 2 s", median <= 2.0,
                   f"{builds} builds for {RELEASES} releases x {STAGES} stages (expected {RELEASES * STAGES})")
        report.add("2 release", "stage -> next stage started (median hop)",
                   f"{statistics.median(hops) * 1000:.0f} ms", "", None,
                   f"p90 {sorted(hops)[int(len(hops) * 0.9)] * 1000:.0f} ms; a hop = CreateBuild, notification "
                   "published, pushed, dispatched")
        calibration = emulator_push_latency(PROJECT, topics["updates"])
    report.add("2 release", "calibration: emulator publish -> push received",
               f"{statistics.median(calibration) * 1000:.0f} ms", "", None,
               f"p90 {sorted(calibration)[int(len(calibration) * 0.9)] * 1000:.0f} ms, bare HTTP endpoint, unbatched publish")
    report.add("2 release", "  of which: decided -> build ended", f"{statistics.median(to_build_end) * 1000:.0f} ms",
               "", None, "state write with outbox, ListBuilds + CreateBuild, the stand-in ends the build")
    report.add("2 release", "  of which: build ended -> completion decided",
               f"{statistics.median(to_decided) * 1000:.0f} ms", "", None,
               "notification published to the emulator, pushed to dispatch, read + decide")
    return report


def main() -> None:
    print_report("Benchmark 2: a whole release of instant stages through real push subscriptions", run().rows)


if __name__ == "__main__":
    main()
