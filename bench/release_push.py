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

``--against DIR`` measures another checkout (e.g. ``git archive 3f32399 | tar -x -C DIR``) on
the same emulators: whole runs of this benchmark (``RELEASES`` releases each, the first one
warm-up), one in that checkout's code and one in this one's, in turn, each in a fresh
interpreter with its own dispatch process and stand-in; it prints both medians, so a speed
claim compares like with like under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
    alternate,
    emulators,
    in_checkout,
    load_average,
    ensure_topics,
    flat_pipeline,
    log_dir,
    new_commit,
    prefix,
    print_report,
)
from shared.app.config import REPO_ROOT, Settings

RELEASES = 4  # run one after another; the first is warm-up
QUICK_RELEASES = 2  # --quick: one warm-up, one measured
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


# Gaps after the previous push at which the emulator's push delay is measured: a message waits for
# the push loop's next round (about every 100 ms on google-cloud-cli's emulator here), so the delay
# falls with the gap up to a round and jumps back after it.
PUSH_ROUNDS = (0.0, 0.05, 0.1)


def emulator_push_latency(project: str, topic: str, n: int = 20, after_push_s: float | None = None) -> list[float]:
    """Calibration: publish (unbatched) -> push request received by a bare HTTP endpoint.
    Messages go 0.1 s apart; with ``after_push_s``, each is published that long after the
    previous one was pushed (the emulator's push loop runs in rounds, see PUSH_ROUNDS)."""
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
    suffix = "" if after_push_s is None else f"-{int(after_push_s * 1000)}ms"
    path = subscriber.subscription_path(project, f"{topic}-calibration{suffix}")
    subscriber.create_subscription(request={"name": path, "topic": subscriber.topic_path(project, topic),
                                            "push_config": {"push_endpoint": f"http://127.0.0.1:{server.server_port}/"}})
    publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
    sent = {}
    try:
        for i in range(n):
            sent[str(i)] = time.time()
            publisher.publish(subscriber.topic_path(project, topic), b"{}", i=str(i)).result(10)
            if after_push_s is None:
                time.sleep(0.1)
                continue
            pushed_by = time.monotonic() + 5
            while str(i) not in received and time.monotonic() < pushed_by:
                time.sleep(0.001)
            time.sleep(after_push_s)
        time.sleep(1)
    finally:
        subscriber.delete_subscription(subscription=path)
        server.shutdown()
    return [received[k] - sent[k] for k in sent if k in received]


def _where(state, standin, t0: float) -> str:
    """What a release that did not finish got to: its last started stage and that stage's build."""
    started = [(st.started_at, sid, st) for sid, st in state.stages.items() if st.started_at]
    if not started:
        return "no stage started"
    at, sid, st = max(started)
    builds = [b for b in standin.builds if f"run-{st.stage_run_id}" in b.tags]
    ends = ", ".join(f"{b.status.name} at +{b.finish_time.timestamp() - t0:.1f} s" if b.finish_time
                     else b.status.name for b in builds) or "no build"
    return (f"{len(started)} stages started, the last {sid} ({st.status.value}) at +{at - t0:.1f} s, "
            f"its build: {ends}; {len(standin.builds)} builds in all")


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    releases = QUICK_RELEASES if quick else RELEASES
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
                for r in range(releases):
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
                        raise RuntimeError(f"release {state.release_id} ended {final.status.value}: "
                                           f"{_where(final, standin, t0)}; see {logs}")
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
                   f"{builds} builds for {releases} releases x {STAGES} stages (expected {releases * STAGES})")
        report.add("2 release", "stage -> next stage started (median hop)",
                   f"{statistics.median(hops) * 1000:.0f} ms", "", None,
                   f"p90 {sorted(hops)[int(len(hops) * 0.9)] * 1000:.0f} ms; a hop = CreateBuild, notification "
                   "published, pushed, dispatched")
        calibration = emulator_push_latency(PROJECT, topics["updates"], n=5 if quick else 20)
        rounds = {gap: statistics.median(emulator_push_latency(PROJECT, topics["updates"], 3 if quick else 15, gap))
                  for gap in PUSH_ROUNDS}
    report.add("2 release", "calibration: emulator publish -> push received",
               f"{statistics.median(calibration) * 1000:.0f} ms", "", None,
               f"p90 {sorted(calibration)[int(len(calibration) * 0.9)] * 1000:.0f} ms, bare HTTP endpoint, unbatched publish")
    report.add("2 release", "emulator push by time since the last push",
               ", ".join(f"{gap * 1000:.0f} ms: {v * 1000:.0f}" for gap, v in rounds.items()) + " ms", "", None,
               "median publish -> push of a message published that long after the previous one was pushed: "
               "the emulator pushes in rounds about 100 ms apart, so a hop's wait depends on its phase")
    report.add("2 release", "  of which: decided -> build ended", f"{statistics.median(to_build_end) * 1000:.0f} ms",
               "", None, "state write with outbox, ListBuilds + CreateBuild, the stand-in ends the build")
    report.add("2 release", "  of which: build ended -> completion decided",
               f"{statistics.median(to_decided) * 1000:.0f} ms", "", None,
               "notification published to the emulator, pushed to dispatch, read + decide")
    return report


# One whole run of this benchmark in a checkout's own code (its bench/release_push.py), on the
# emulators at ``hosts``; prints its rows as [what, value] pairs.
CHILD = """
import json
from bench import release_push
print(json.dumps([[r.what, r.value] for r in release_push.run({hosts!r}).rows]))
"""


def _figures(rows: list[list[str]] | None) -> dict[str, list[float]] | None:
    """Per-release totals (s), the run's median hop and its calibration (ms), read from the rows
    a run printed (the rows of 3f32399 and of today have the same names); None: the run failed."""
    if rows is None:
        return None

    def number(value: str) -> float:
        return float(re.match(r"[\d.]+", value).group(0))

    return {"totals": [number(v) for what, v in rows if re.match(r"release \d+:", what)],
            "hop": [number(v) for what, v in rows if "median hop" in what],
            "calibration": [number(v) for what, v in rows if what.startswith("calibration")]}


def compare(before: Path, runs: int, hosts: dict[str, str] | None = None) -> Report:
    """``runs`` whole runs in ``before`` and here, one of each in turn, on one pair of emulators."""
    report = Report()
    with emulators(hosts) as h:
        code = CHILD.format(hosts={"firestore": h["firestore"], "pubsub": h["pubsub"]})
        sample = lambda root: _figures(in_checkout(root, code, timeout=600))  # noqa: E731
        got_before, got_after = alternate(before, REPO_ROOT, sample, runs)
    failed = {"before": got_before.count(None), "after": got_after.count(None)}
    got_before, got_after = [g for g in got_before if g], [g for g in got_after if g]
    if not got_before or not got_after:
        raise RuntimeError(f"every run failed in one checkout ({failed}); their stderr is above")

    def pooled(samples: list[dict], key: str) -> list[float]:
        return [v for s in samples for v in s[key]]

    totals_b, totals_a = pooled(got_before, "totals"), pooled(got_after, "totals")
    median_b, median_a = statistics.median(totals_b), statistics.median(totals_a)
    report.add("2 release", "whole release, median (min-max)",
               f"{median_b:.2f} ({min(totals_b):.2f}-{max(totals_b):.2f}) -> "
               f"{median_a:.2f} ({min(totals_a):.2f}-{max(totals_a):.2f}) s",
               "<= 1.1x before", median_a <= 1.1 * median_b,
               f"{median_a / median_b:.2f}x; {len(totals_b)} / {len(totals_a)} releases from {runs} alternating "
               f"runs of {RELEASES - 1} (+1 warm-up); runs that crashed: {failed['before']} / {failed['after']}")
    hop_b, hop_a = statistics.median(pooled(got_before, "hop")), statistics.median(pooled(got_after, "hop"))
    cal = statistics.median(pooled(got_before, "calibration") + pooled(got_after, "calibration"))
    report.add("2 release", "median hop (median of the runs' medians)", f"{hop_b:.0f} -> {hop_a:.0f} ms",
               "<= 1.5x calibration", hop_a <= 1.5 * cal, f"{hop_a / cal:.2f}x the calibration")
    report.add("2 release", "calibration: emulator publish -> push received", f"{cal:.0f} ms", "", None,
               "median over both checkouts' runs; messages 100 ms apart wait for the emulator's next push round, "
               "so a hop inside a burst can be shorter (row 'emulator push by time since the last push')")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to measure alternately with this one")
    parser.add_argument("--runs", type=int, default=3, help="with --against: whole runs of each checkout")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RELEASES} releases, a short calibration")
    args = parser.parse_args(argv)
    if args.against:
        before = args.against.resolve()
        print(f"before: {before}  after: {REPO_ROOT}  load average: {load_average()}", flush=True)
        print_report("Benchmark 2: a whole release through real push subscriptions, before -> after",
                     compare(before, args.runs).rows)
        print(f"load average after: {load_average()}")
        return
    print_report("Benchmark 2: a whole release of instant stages through real push subscriptions",
                 run(quick=args.quick).rows)


if __name__ == "__main__":
    main()
