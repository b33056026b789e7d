"""Regenerate the chaos fixtures made by the real tools (SOURCES.md says which file came from where).

    .venv/bin/python tests/unit/data/chaos/generate.py [--rerun-only]

Serves the sample app twice, healthy and with faults (every 10th `/` answers 500), and runs Locust
headless, pytest (--junitxml, --json-report) and Node's test runner (--test-reporter=junit) against
each, and pytest once more with pytest-rerunfailures' --reruns 1 against the faulty app. The tests pin the numbers these runs produced; after regenerating, update them from the output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))

from local import chaos_tools  # noqa: E402
from shared.domain import chaos  # noqa: E402

RUNS = {"healthy": {"WORK_MS": "12"}, "faulty": {"WORK_MS": "12", "CANARY_FAULTS": "5xx=0.1"}}


def main(argv: list[str]) -> None:
    rerun_only = argv == ["--rerun-only"]  # just the pytest-rerunfailures files, keeping the other runs
    made = []
    for name, env in RUNS.items():
        if rerun_only and name != "faulty":
            continue
        with chaos_tools.served_sample_app(env) as base:
            if not rerun_only:
                locust = chaos_tools.run_locust(base, HERE / f"locust_{name}")
                (HERE / f"locust_{name}_stats_history.csv").unlink(missing_ok=True)
                (HERE / f"locust_{name}_exceptions.csv").unlink(missing_ok=True)
                chaos_tools.run_pytest(base, HERE / f"pytest_{name}_junit.xml", HERE / f"pytest_{name}_report.json")
                chaos_tools.run_node(base, HERE / f"node_{name}_junit.xml")
                made += [("locust", locust["stats"]), ("locust", locust["json"]),
                         ("junit", HERE / f"pytest_{name}_junit.xml"), ("json", HERE / f"pytest_{name}_report.json"),
                         ("junit", HERE / f"node_{name}_junit.xml")]
            if name == "faulty":  # the failing `/` answers pass on a re-run: flaky, not failed
                chaos_tools.run_pytest(base, HERE / "pytest_rerun_junit.xml", HERE / "pytest_rerun_report.json",
                                       ("--reruns", "1"))
                made += [("junit", HERE / "pytest_rerun_junit.xml"), ("json", HERE / "pytest_rerun_report.json")]
    for kind, path in made:
        m = chaos.read_artifact(kind, path)
        print(json.dumps({"file": path.name, "requests": m.requests, "errors": m.errors, "p95_ms": m.p95_ms}))


if __name__ == "__main__":
    main(sys.argv[1:])
