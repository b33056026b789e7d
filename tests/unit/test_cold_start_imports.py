"""Cold start: each function's import and first-call wiring loads only the clients its path uses.

Importing a Google client library costs 20-300 ms, and every function pays its imports on
each cold start (bench/cold_start.py measures it). Each case runs in a fresh interpreter,
imports functions.main, wires one entry point as its first request does (shared/bootstrap.py,
no I/O: client construction connects to nothing) and reports sys.modules. A module-level
import of a client, or wiring that builds what its path does not use, fails here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shared.app.config import REPO_ROOT

CLIENTS = {
    "firestore": "google.cloud.firestore",
    "pubsub": "google.cloud.pubsub_v1",
    "cloudbuild": "google.cloud.devtools.cloudbuild_v1",
    "run": "google.cloud.run_v2",
    "tasks": "google.cloud.tasks_v2",
    "logging": "google.cloud.logging_v2",
    "monitoring": "google.cloud.monitoring_v3",
    "iam": "google.cloud.iam_admin_v1",
    "resourcemanager": "google.cloud.resourcemanager_v3",
    "artifactregistry": "google.cloud.artifactregistry_v1",
    "markdown": "markdown_it",
    # ours: every executor module, and the approval pages and notifiers
    "executor modules": "shared.adapters.executors.run_services",
    "notifiers": "shared.adapters.notify",
}
EVERYTHING = set(CLIENTS)

# entry -> (its first call's wiring, what that path may load)
PATHS = {
    "module import": ("", set()),
    "on_push": ("bootstrap.push_service()", {"firestore"}),
    "dispatch": ("bootstrap.dispatcher()", {"firestore"}),
    "drain_dead_letters": ("bootstrap.dead_letters()", {"firestore"}),
    "on_approval": ("bootstrap.approval_pages()", {"firestore", "notifiers"}),
    "sweep": ("bootstrap.sweeper()",
              {"firestore"}),
    "dashboard": ("bootstrap.dashboard()", {"firestore"}),
    "probe (a check's round)": ("bootstrap.probe_service(); bootstrap.link_keyring()", set()),
    "operator": ("bootstrap.operator()", {"firestore", "notifiers"}),  # approve / reject by identity
}

CHILD = """
import json, sys
import functions.main
from shared import bootstrap
{wiring}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(wiring: str) -> set[str]:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO_ROOT), "GOOGLE_CLOUD_PROJECT": "cold-start", "RELEASE_PROJECT": "cold-start",
        # Nothing connects while wiring; these keep any client that is built off Google.
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9", "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
        "RELEASE_APPROVAL_KEYS": "k1:cold-start-test-key", "RELEASE_WEBHOOK_SECRET": "cold-start-secret",
        "RELEASE_PIPELINE_FILE": str(REPO_ROOT / "pipelines" / "noesis2.yaml"),
        "RELEASE_CLOUD_BUILD_ENDPOINT": "127.0.0.1:9", "RELEASE_CLOUD_RUN_ENDPOINT": "127.0.0.1:9",
        "RELEASE_CLOUD_TASKS_ENDPOINT": "127.0.0.1:9", "RELEASE_PROBE_URL": "http://127.0.0.1:9/",
    })
    done = subprocess.run([sys.executable, "-c", CHILD.format(wiring=wiring.replace("; ", "\n"))], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = set(json.loads(done.stdout.strip().splitlines()[-1]))
    return {name for name, module in CLIENTS.items() if module in modules}


@pytest.mark.parametrize("entry", PATHS)
def test_a_path_loads_only_the_clients_it_uses(entry):
    wiring, allowed = PATHS[entry]
    assert loaded_by(wiring) - allowed == set()


def test_the_check_detects_a_client_that_a_path_loads():
    # The same probe sees a client once the wiring builds it (so an empty set above means something).
    assert {"cloudbuild", "executor modules"} <= loaded_by(
        "bootstrap.executors()['deploy']; from shared.adapters import gcp_clients; "
        "gcp_clients.cloud_build(bootstrap.settings())")
