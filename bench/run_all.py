"""`make bench`: every benchmark, one after another, on one pair of emulators.

Prints each benchmark's table as it finishes and a summary at the end. Figures
depend on the machine and on what else runs on it: the load average before the
run is printed with them. Nothing here asserts timing.

``--quick`` (`make bench-quick`, run by .ci/run after the tests) runs every benchmark
at a small scale (``run(hosts, quick=True)``: a few iterations) so that a benchmark the
code has outgrown crashes in CI instead of rotting unnoticed. The exit status is 1 when
a benchmark raised, never because of a figure.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback

from bench.common import Row, emulators, load_average, print_report, table

BENCHMARKS = [
    ("bench.dispatcher_overhead", "1: dispatcher overhead per event"),
    ("bench.release_push", "2: a whole release of instant stages through real push subscriptions"),
    ("bench.concurrent_releases", "3: 50 releases at once"),
    ("bench.duplicate_storm", "4: duplicate storm"),
    ("bench.cost", "5: Firestore reads and writes per transition"),
    ("bench.cold_start", "6: cold start"),
    ("bench.push_latency", "7: push trigger answer time"),
    ("bench.gcp_clock", "8: detection delay under GCP's clocks (60 s tick, Cloud Tasks probes)"),
    ("bench.release_cost", "9: one release with a 2 h approval wait: reads, writes, function-seconds, messages"),
    ("bench.sweep_scale", "10: a sweep over 5,000 active releases"),
    ("bench.canary_analysis", "11: canary verdict time and API calls per interval"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these benchmarks, e.g. cost cold_start")
    parser.add_argument("--quick", action="store_true", help="every benchmark at a small scale (CI)")
    args = parser.parse_args(argv)
    wanted = set(args.names)
    print(f"bench{' --quick' if args.quick else ''} on {platform.node()}: {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {load_average()}", flush=True)
    started = time.monotonic()
    rows: list[Row] = []
    failed = 0
    with emulators() as hosts:
        for module_name, title in BENCHMARKS:
            if wanted and module_name.split(".", 1)[1] not in wanted:
                continue
            t0 = time.monotonic()
            try:
                module = importlib.import_module(module_name)
                got = module.run(hosts, quick=args.quick).rows
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
                failed += 1
                traceback.print_exc()
                got = [Row(module_name, "benchmark failed", "see traceback above", met=False)]
            print_report(f"Benchmark {title} ({time.monotonic() - t0:.0f} s)", got)
            rows.extend(got)
    print(f"\n== Summary ({time.monotonic() - started:.0f} s, load average {load_average()}) ==")
    print(table([Row(r.bench, r.what, r.value, r.target, r.met) for r in rows if r.met is not None]))
    if failed:
        print(f"{failed} benchmark(s) crashed: see the tracebacks above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
