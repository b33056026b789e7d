"""Benchmark 6: cold start - import time of the function module and each entry point's first call path.

Every figure comes from a fresh interpreter (median of RUNS):

* ``python -X importtime -c "import functions.main"``: the cumulative time the
  interpreter reports for ``functions.main`` (and, inside it, for functions_framework,
  which the Cloud Functions runtime has loaded anyway before it imports main.py);
* per entry point: wall time of ``import functions.main`` plus what its first
  invocation wires before doing any I/O (shared.bootstrap: settings, clients,
  services, and the modules their code paths import). Client construction makes no
  network call; the emulator host variables only keep the clients off real Google.

Also listed: which heavy client libraries each path imports, to check that clients
only some events need (Pub/Sub publisher, Cloud Build, Cloud Run) stay unimported.

``--against DIR`` measures another checkout (e.g. ``git archive <commit> | tar -x -C DIR``)
with these same first-call paths, alternating one sample there and one here, so both see
the same machine load; it prints the medians of wall time and of CPU time (the process's
own user + system time, which other processes on a shared machine disturb far less).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import APPROVAL_KEYS, Report, alternate, in_checkout, print_report
from shared.app.config import REPO_ROOT

RUNS = 5
HEAVY = {
    "google.cloud.firestore": "firestore",
    "google.cloud.pubsub_v1": "pubsub",
    "google.cloud.devtools.cloudbuild_v1": "cloudbuild",
    "google.cloud.run_v2": "run",
    "google.cloud.resourcemanager_v3": "resourcemanager",
    "google.cloud.tasks_v2": "tasks",
    "google.cloud.logging_v2": "logging",
    "google.cloud.monitoring_v3": "monitoring",
    "google.cloud.iam_admin_v1": "iam",
    "markdown_it": "markdown",
    "flask": "flask",
}

# What the first invocation of each entry point builds (see functions/main.py), without I/O.
# "+ client": the client a typical first event needs, created as its code path creates it.
FIRST_CALL = {
    "on_push (push -> release.started published)":
        "bootstrap.push_service(); bootstrap.publisher().client",
    "dispatch (an event that needs no client)":
        "bootstrap.dispatcher(); import shared.domain.gate, shared.domain.events, shared.domain.commands",
    "dispatch (release.started -> CreateBuild)":
        "bootstrap.dispatcher(); from shared.adapters import gcp_clients; gcp_clients.cloud_build(bootstrap.settings())",
    "on_approval (confirm page, GET)": "bootstrap.approvals()",
    "sweep (tick, polls builds and jobs)":
        "from shared.app.sweeper import sweep; bootstrap.store(); bootstrap.executors(); bootstrap.publisher(); "
        "from shared.adapters import gcp_clients; gcp_clients.cloud_build(bootstrap.settings()); "
        "gcp_clients.run_executions(bootstrap.settings())",
    "dashboard (GET)": "from shared.ui.dashboard import handle; bootstrap.store()",
    "probe (one round of a check's GETs, next probe scheduled)":
        "bootstrap.probe_service(); bootstrap.link_keyring(); bootstrap.probe_scheduler().client",
    "probe (a job poll)":
        "bootstrap.probe_service().store.load_pipeline; bootstrap.probe_scheduler().client; "
        "from shared.adapters import gcp_clients; gcp_clients.run_executions(bootstrap.settings())",
}

CHILD = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
import functions.main
t1 = time.perf_counter()
from shared import bootstrap
{first_call}
t2, c2 = time.perf_counter(), time.process_time()
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "first_call_ms": (t2 - t1) * 1000, "cpu_ms": (c2 - c0) * 1000,
                  "heavy": sorted(n for n in {heavy!r} if n in sys.modules)}}))
"""


def child_env(root: Path = REPO_ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "0",
        # No server needed: nothing connects before a request; these keep clients off Google.
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
        "GOOGLE_CLOUD_PROJECT": "cold-start", "RELEASE_PROJECT": "cold-start",
        "RELEASE_APPROVAL_KEYS": APPROVAL_KEYS, "RELEASE_WEBHOOK_SECRET": "cold-start-secret",
        "RELEASE_PIPELINE_FILE": str(root / "pipelines" / "noesis2.yaml"),
        "RELEASE_CLOUD_BUILD_ENDPOINT": "127.0.0.1:9", "RELEASE_CLOUD_RUN_ENDPOINT": "127.0.0.1:9",
        "RELEASE_IAM_ENDPOINT": "127.0.0.1:9", "RELEASE_CLOUD_TASKS_ENDPOINT": "127.0.0.1:9",
        "RELEASE_PROBE_URL": "http://127.0.0.1:9/",
    })
    return env


def importtime(module: str = "functions.main") -> dict[str, float]:
    """Cumulative import times (ms) from -X importtime for the module and its biggest parts."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], cwd=REPO_ROOT,
                         env=child_env(), capture_output=True, text=True, check=True).stderr
    times = {}
    for line in out.splitlines():
        m = re.match(r"import time:\s+\d+\s+\|\s+(\d+)\s+\|\s+(\s*)(\S+)", line)
        if m:
            times[m.group(3)] = max(times.get(m.group(3), 0), int(m.group(1)) / 1000)
    return times


def first_call(entry: str, root: Path = REPO_ROOT) -> dict | None:
    """One sample of ``entry`` in a fresh interpreter on the checkout at ``root`` (None: that
    checkout has no such path)."""
    code = CHILD.format(first_call=FIRST_CALL[entry].replace("; ", "\n"), heavy=tuple(HEAVY))
    return in_checkout(root, code, child_env(root))


def run(hosts: dict[str, str] | None = None, quick: bool = False) -> Report:
    """``quick``: one sample of each instead of the median of RUNS."""
    report = Report()
    runs = 1 if quick else RUNS
    subprocess.run([sys.executable, "-c", "import functions.main"], cwd=REPO_ROOT, env=child_env(), check=True)  # .pyc
    samples = [importtime() for _ in range(runs)]
    main_ms = statistics.median(s["functions.main"] for s in samples)
    ff_ms = statistics.median(s.get("functions_framework", 0) for s in samples)
    report.add("6 cold start", "import functions.main (-X importtime)", f"{main_ms:.0f} ms", "<= 400 ms", main_ms <= 400,
               f"median of {runs}; functions_framework (flask) is {ff_ms:.0f} ms of it, loaded by the runtime anyway")
    for entry in FIRST_CALL:
        got = [first_call(entry) for _ in range(runs)]
        if any(r is None for r in got):
            raise RuntimeError(f"{entry}: the first call failed in a fresh interpreter (its stderr is above)")
        imp = statistics.median(r["import_ms"] for r in got)
        wire = statistics.median(r["first_call_ms"] for r in got)
        cpu = statistics.median(r["cpu_ms"] for r in got)
        heavy = ", ".join(HEAVY[h] for h in got[0]["heavy"])
        total = imp + wire
        report.add("6 cold start", f"{entry}: import + first-call wiring", f"{imp:.0f} + {wire:.0f} = {total:.0f} ms",
                   "<= 400 ms", total <= 400,
                   f"CPU {cpu:.0f} ms; {total - ff_ms:.0f} ms without functions_framework; loads: {heavy}")
    return report


def compare(before: Path, runs: int) -> Report:
    """Each path measured ``runs`` times in ``before`` and here, one sample of each in turn."""
    report = Report()
    for root in (before, REPO_ROOT):  # compile .pyc first, as a deployed function has them
        subprocess.run([sys.executable, "-c", "import functions.main"], cwd=root, env=child_env(root), check=True)
    for entry in FIRST_CALL:
        pairs = list(zip(*alternate(before, REPO_ROOT, lambda root: first_call(entry, root), runs)))
        if any(b is None for b, _ in pairs):
            report.add("6 cold start", entry, "(not in the other checkout)", "", True, "")
            continue

        def medians(samples: list[dict]) -> tuple[float, float]:
            return (statistics.median(s["import_ms"] + s["first_call_ms"] for s in samples),
                    statistics.median(s["cpu_ms"] for s in samples))

        (wall_b, cpu_b), (wall_a, cpu_a) = medians([b for b, _ in pairs]), medians([a for _, a in pairs])
        report.add("6 cold start", f"{entry}: wall / CPU", f"{wall_b:.0f} / {cpu_b:.0f} -> {wall_a:.0f} / {cpu_a:.0f} ms",
                   "<= 400 ms", wall_a <= 400,
                   f"median of {runs} alternating samples; CPU {cpu_a - cpu_b:+.0f} ms; loads here: "
                   + ", ".join(HEAVY[h] for h in pairs[0][1]["heavy"]))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to measure alternately with this one")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args(argv)
    if args.against:
        before = args.against.resolve()
        print(f"before: {before}  after: {REPO_ROOT}  load average: {os.getloadavg()}")
        print_report("Benchmark 6: cold start, before -> after", compare(before, args.runs).rows)
        print(f"load average after: {os.getloadavg()}")
        return
    print_report("Benchmark 6: cold start", run().rows)


if __name__ == "__main__":
    main()
