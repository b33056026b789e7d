"""What every benchmark shares: emulators, a counted Firestore store, a bench pipeline, tables.

Benchmarks measure and print; they never assert timing. Each one can run alone
(`python -m bench.<name>`, starting the emulators it needs and stopping them) or
from bench.run_all, which starts the emulators once and hands their hosts over.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from shared.app.config import REPO_ROOT
from shared.domain.pipeline import parse_pipeline

PROJECT = "bench-project"
LOG_DIR = REPO_ROOT / "test-output" / "bench"
APPROVAL_KEYS = "b1:bench-link-signing-key-not-a-secret"


# -- emulators -------------------------------------------------------------------------
@contextlib.contextmanager
def emulators(hosts: dict[str, str] | None = None, kinds: Sequence[str] = ("firestore", "pubsub")) -> Iterator[dict]:
    """Yield {"firestore": host, "pubsub": host, "project": PROJECT}; start what ``hosts`` lacks.

    Sets FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST for this process while inside,
    and stops only the emulators it started."""
    from local.emulators import start_emulator

    hosts = dict(hosts or {})
    started = []
    saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    try:
        for kind in kinds:
            if kind not in hosts:
                emulator = start_emulator(kind, PROJECT, LOG_DIR / "logs")
                started.append(emulator)
                hosts[kind] = emulator.host
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        if "firestore" in hosts:
            os.environ["FIRESTORE_EMULATOR_HOST"] = hosts["firestore"]
        if "pubsub" in hosts:
            os.environ["PUBSUB_EMULATOR_HOST"] = hosts["pubsub"]
        yield {**hosts, "project": PROJECT}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for emulator in started:
            emulator.stop()


def prefix(name: str) -> str:
    """A collection prefix no other run uses, so runs on one emulator never meet."""
    return f"bench_{name}_{uuid.uuid4().hex[:8]}_"


# -- a counted real store -----------------------------------------------------------------
class CountingStore:
    """A real store (FirestoreStore), counted: every document read and write it makes.

    ``get`` reads one document, ``create``/``update`` write one; ``load_pipeline`` reads one
    only on a cache miss, which the wrapped store's own cache decides."""

    def __init__(self, inner: Any):
        self.inner = inner
        self._lock = threading.Lock()
        self.reads = 0
        self.writes = 0
        self.stale = 0

    def _count(self, reads: int = 0, writes: int = 0) -> None:
        with self._lock:
            self.reads += reads
            self.writes += writes

    def get(self, release_id):
        self._count(reads=1)
        return self.inner.get(release_id)

    def create(self, state):
        self._count(writes=1)
        return self.inner.create(state)

    def update(self, state, token):
        from shared.domain.errors import StaleWrite

        self._count(writes=1)  # a refused conditional write is still a billed write attempt
        try:
            return self.inner.update(state, token)
        except StaleWrite:
            with self._lock:
                self.stale += 1
            raise

    def list_due(self, now, limit, after=None):
        found, cursor = self.inner.list_due(now, limit, after)
        self._count(reads=max(1, len(found)))  # a query bills at least one read
        return found, cursor

    def update_fields(self, release_id, fields, token):
        from shared.domain.errors import StaleWrite

        self._count(writes=1)
        try:
            return self.inner.update_fields(release_id, fields, token)
        except StaleWrite:
            with self._lock:
                self.stale += 1
            raise

    def load_pipeline(self, digest):
        cached = digest in getattr(self.inner, "_pipeline_cache", {})
        if not cached:
            self._count(reads=1)
        return self.inner.load_pipeline(digest)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.reads, self.writes


# -- a pipeline whose every stage can finish at once --------------------------------------
def flat_pipeline(n_stages: int = 15, image: str = "bench/instant"):
    """``n_stages`` build stages (no approval: nobody clicks in a benchmark). With a stand-in
    outcome rule for the image's builds they finish as soon as they are created."""
    return parse_pipeline({
        "name": f"bench-{n_stages}",
        "stages": [
            {"id": f"s{i:02d}", "kind": "build", "timeout": "10m", "params": {"steps": [{"name": image}]}}
            for i in range(1, n_stages + 1)
        ],
    })


def mixed_pipeline():
    """The 15 executable stages of the shipped flow (every kind but the approval), in order."""
    kinds = ["preflight", "build", "build", "build", "build", "build", "build", "job", "deploy", "job",
             "check", "job", "deploy", "check", "traffic"]
    params = {
        "preflight": {"service_account": "sa@example.com"}, "build": {"steps": [{"name": "x"}]},
        "job": {"job": "j"}, "deploy": {"services": ["web"], "traffic_percent": 100},
        # An explicit url: the check probes no deploy of ours, so the pipeline-order rules
        # (shared/domain/pipeline_order.py) need no environment on any stage, and with none
        # the dispatcher takes no environment lock: the figures stay the dispatcher's own.
        "check": {"target": "staging", "url": "http://127.0.0.1:9", "paths": ["/"]},
        "traffic": {"services": ["web"], "percent": 100},
    }
    return parse_pipeline({
        "name": "bench-mixed",
        "stages": [{"id": f"s{i:02d}", "kind": k, "timeout": "10m", "params": params[k]} for i, k in enumerate(kinds, 1)],
    })


# -- figures ------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank, of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99), "max": max(ms),
            "mean": statistics.fmean(ms)}


@dataclass
class Row:
    """One measured figure against its target. ``met`` None: no target, informational."""

    bench: str
    what: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        self.rows.append(Row(*args, **kwargs))


def table(rows: Sequence[Row]) -> str:
    header = ("benchmark", "figure", "value", "target", "met")
    body = [(r.bench, r.what, r.value, r.target, {True: "yes", False: "NO", None: ""}[r.met]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
    notes = [f"  * {r.bench} / {r.what}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


def print_report(title: str, rows: Sequence[Row]) -> None:
    print(f"\n== {title} ==", flush=True)
    print(table(rows), flush=True)


def log_dir(name: str) -> Path:
    path = LOG_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_topics(project: str, *topics: str) -> None:
    """Create the Pub/Sub topics on the emulator (PUBSUB_EMULATOR_HOST) if missing."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for topic in topics:
        try:
            publisher.create_topic(name=publisher.topic_path(project, topic))
        except AlreadyExists:
            pass


def quiet() -> None:
    """functions/main.py logs every transition at INFO; a benchmark prints only its table."""
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    for name in ("shared", "functions"):
        logging.getLogger(name).setLevel(logging.WARNING)


def bench_keyring():
    """The link keys of every bench: the dispatcher checks completions against them."""
    from shared.domain.approval_tokens import Keyring

    return Keyring.from_setting(APPROVAL_KEYS)


def signed(event):
    """A completion as the functions publish it (signed with the bench's link keys)."""
    from shared.domain.completions import sign_finish

    return sign_finish(event, bench_keyring())


def make_dispatcher(store, publisher, executors, settings, clock=None, approvals=None, notifier=None):
    """The real Dispatcher with fake approvals/notifier, environment locks over Firestore (no
    bench stage names an environment, so none is taken: the figures are the dispatcher's own)
    and a roll-back no bench pipeline asks for (none has a failing check)."""
    from shared.app.signing_publisher import SigningPublisher
    from shared.testing.fakes import FakeApprovals, FakeNotifier
    from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
    from shared.app.locks import EnvironmentLocks
    from shared.app.ports import SystemClock
    from shared.app.dispatcher import Dispatcher

    inner = getattr(store, "inner", store)
    publisher = SigningPublisher(publisher, bench_keyring)  # completions signed and checked, as on GCP
    locks = EnvironmentLocks(FirestoreAppRecords(inner.client, settings), publisher, settings,
                             service_lock_records(inner.client, settings))
    return Dispatcher(store, publisher, executors, approvals or FakeApprovals(), notifier or FakeNotifier(),
                      clock or SystemClock(), settings, locks, FirestoreDeadLetters(inner.client, settings),
                      roll_back=lambda service, to=None: {"service": service, "note": "bench: nothing to roll back"},
                      completion_keys=bench_keyring())


class CpuMeter:
    """Machine-wide CPU busy share (all processes, /proc/stat) and this process's CPU time."""

    def __init__(self) -> None:
        self.machine0 = self._machine()
        self.own0 = time.process_time()

    @staticmethod
    def _machine() -> tuple[int, int]:
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return 0, 0
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values) - idle, sum(values)

    def busy_share(self) -> float:
        """Busy share of all cores since construction (0..1); NaN when /proc/stat is missing."""
        busy1, total1 = self._machine()
        total = total1 - self.machine0[1]
        return (busy1 - self.machine0[0]) / total if total else float("nan")

    def own_s(self) -> float:
        return time.process_time() - self.own0


def new_commit() -> str:
    """A commit sha no other release shares (release ids are derived from its first 12 chars)."""
    return uuid.uuid4().hex + uuid.uuid4().hex[:8]


# -- another checkout, measured alternately with this one ----------------------------------
T = TypeVar("T")


def in_checkout(root: Path, code: str, env: dict[str, str] | None = None, timeout: float | None = None) -> Any:
    """Run ``code`` in a fresh interpreter on the checkout at ``root`` (its cwd and PYTHONPATH,
    this venv's packages) and return the JSON of the last line it prints; None when it fails
    (that checkout has no such path), with its stderr's tail printed so a crash is not silent."""
    env = {**(env if env is not None else os.environ), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        print(f"in {root}: exit {done.returncode}: {done.stderr.strip()[-600:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1])


def alternate(before: Path, after: Path, sample: Callable[[Path], T], runs: int) -> tuple[list[T], list[T]]:
    """``runs`` samples of ``sample(root)`` for each checkout, one of each in turn, so both see
    the same machine load (the other engineers' work on a shared machine comes and goes)."""
    got_before: list[T] = []
    got_after: list[T] = []
    for _ in range(runs):
        got_before.append(sample(before))
        got_after.append(sample(after))
    return got_before, got_after


def load_average() -> str:
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
