"""Benchmark 10: one sweep over 5,000 active releases on the Firestore emulator.

The mix: ``RUNNING`` releases with a job running whose probes went quiet (due: the
sweeper must poll every one), ``QUEUED`` releases waiting for a lock (due: they get a
``release.tick``) and the rest awaiting approval for hours (not due: never read).
Every running stage is polled through an executor that answers "still running" after
``POLL_RPC_S`` (ASSUMED: one Cloud Run Admin API read); the sweep's own reads and its
``wake_at`` writes go to the emulator. A second sweep right after shows that every
release looked at moved back in the order (nothing is read twice, nothing starves).
Before: the sweeper read every active release in document-id order, 500 at most, and
polled one stage after another; with 600 awaiting approval and 20 running it polled none.
"""
from __future__ import annotations

import time

from bench.common import PROJECT, CountingStore, Report, emulators, prefix, print_report, quiet

TOTAL = 5_000
RUNNING = 1_000
QUEUED = 500
POLL_RPC_S = 0.05


class SlowPoll:
    def __init__(self):
        self.polls = 0

    def start(self, *args):
        raise AssertionError("the sweeper never starts stages")

    def poll(self, pipeline, stage, state):
        time.sleep(POLL_RPC_S)
        self.polls += 1
        return None


def _seed(raw, pipeline, now: float, total: int = TOTAL, running: int = RUNNING, queued: int = QUEUED) -> None:
    from shared.adapters.firestore_store import _document
    from shared.domain.state import ReleaseStatus, StageStatus, new_release
    from shared.domain.wake import next_wake

    batch, n = raw.client.batch(), 0
    for i in range(total):
        state = new_release(pipeline, repo="bench/sweep", ref="refs/heads/main", commit=f"{i:08x}" * 5,
                            version="1.0.0", pushed_by="dev@example.com", now=now - 3600)
        if i < running:
            st = state.stages["staging-migrate"]
            st.status, st.attempt, st.stage_run_id = StageStatus.RUNNING, 1, f"{state.release_id}.staging-migrate.a1"
            st.started_at, st.deadline = now - 300, now + 600
            state.wake_at = next_wake(state, now - 120)  # its safety net came due a while ago
        elif i < running + queued:
            state.status, state.waiting_for = ReleaseStatus.QUEUED, "staging"
            state.stages["staging-migrate"].status = StageStatus.QUEUED
            state.wake_at = next_wake(state, now - 200)
        else:
            st = state.stages["approval"]
            state.status = ReleaseStatus.AWAITING_APPROVAL
            st.status, st.attempt, st.deadline = StageStatus.WAITING, 1, now + 6 * 3600
            state.wake_at = next_wake(state, now)
        batch.create(raw.releases.document(state.release_id), _document(state))
        n += 1
        if n == 400:
            batch.commit()
            batch, n = raw.client.batch(), 0
    if n:
        batch.commit()


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    """``quick``: a twentieth of the releases (250: 50 running, 25 queued)."""
    total, running, queued = (TOTAL // 20, RUNNING // 20, QUEUED // 20) if quick else (TOTAL, RUNNING, QUEUED)
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore
    from shared.app.config import Settings
    from shared.app.sweeper import sweep
    from shared.domain.pipeline import load_pipeline
    from shared.testing.fakes import FakeClock, FakePublisher

    quiet()
    report = Report()
    with emulators(hosts, kinds=("firestore",)):
        settings = Settings(project=PROJECT, collection_prefix=prefix("sweep"))
        raw = FirestoreStore(firestore.Client(project=PROJECT), settings)
        pipeline = load_pipeline(settings.pipeline_file)
        raw.save_pipeline(pipeline)
        now = time.time()
        t0 = time.monotonic()
        _seed(raw, pipeline, now, total, running, queued)
        seeded_s = time.monotonic() - t0
        store, publisher, executor = CountingStore(raw), FakePublisher(), SlowPoll()
        executors = {kind: executor for kind in ("build", "job", "deploy", "traffic", "check", "preflight")}
        t0 = time.monotonic()
        first = sweep(store, executors, publisher, FakeClock(now), settings)
        first_s = time.monotonic() - t0
        reads, writes = store.snapshot()
        t0 = time.monotonic()
        second = sweep(store, executors, publisher, FakeClock(now + 1), settings)
        second_s = time.monotonic() - t0
    bench = f"10 sweep x{total}"
    report.add(bench, f"one sweep: {running} running + {queued} queued due, {total - running - queued} awaiting approval",
               f"{first_s:.1f} s", "< 45 s budget", first_s < 45,
               note=f"seeding {total} releases took {seeded_s:.0f} s; poll RPC {POLL_RPC_S * 1000:.0f} ms (assumed), "
                    "16 in parallel, pages of 200")
    report.add(bench, "running stages polled", f"{first.polled} of {running}", f"{running}", first.polled == running)
    report.add(bench, "queued releases ticked", f"{len(first.ticks)} of {queued}", f"{queued}",
               len(first.ticks) == queued)
    report.add(bench, "documents read / written by the sweep", f"{reads} / {writes}",
               f"{running + queued} / {running + queued}", None,
               note=f"awaiting approval: not read; {first.pages} pages; errors {len(first.errors)}")
    report.add(bench, "the next sweep right after", f"{second.releases} releases, {second_s:.2f} s", "0 releases",
               second.releases == 0, note="each release looked at got its next wake_at: none is read twice")
    return report


if __name__ == "__main__":
    print_report("Benchmark 10: a sweep over 5,000 active releases", run().rows)
