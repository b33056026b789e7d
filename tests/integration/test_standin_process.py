"""`python -m local.standin --config FILE`: seeds jobs and services, serves, stops cleanly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings


@pytest.fixture
def process(tmp_path):
    config = {
        "project": "local-project", "region": "europe-west3", "workspace": str(REPO_ROOT),
        "local_images": ["local"], "log_dir": str(tmp_path / "logs"),
        "jobs": [{"name": "noesis2-migrate", "image": "local", "command": [sys.executable, "-m", "sample_app.migrate"],
                  "env": {"DATA_DIR": str(tmp_path / "data")}}],
        "services": [{"name": "noesis2-web", "image": "local", "env": {"VERSION": "0.0.1"},
                      "labels": {"version": "0-0-1"}}],
        "iam_bindings": {"roles/run.admin": ["user:ops@example.com"]},
    }
    path = tmp_path / "standin.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "local.standin", "--config", str(path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("STANDIN_READY "):
            proc.kill()
            pytest.fail(f"stand-in did not start: {line}{proc.stdout.read()}")
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_process_serves_seeded_resources_and_stops_its_children(process):
    proc, endpoint = process
    settings = Settings(cloud_run_endpoint=endpoint, iam_endpoint=endpoint)
    parent = "projects/local-project/locations/europe-west3"
    service = gcp_clients.run_services(settings).get_service(name=f"{parent}/services/noesis2-web")
    with urllib.request.urlopen(service.uri + "/", timeout=5) as response:
        assert json.loads(response.read())["version"] == "0.0.1"
    execution = gcp_clients.run_jobs(settings).run_job(name=f"{parent}/jobs/noesis2-migrate").result(timeout=30)
    assert execution.succeeded_count == 1
    policy = gcp_clients.projects(settings).get_iam_policy(resource="projects/local-project")
    assert [(b.role, list(b.members)) for b in policy.bindings] == [("roles/run.admin", ["user:ops@example.com"])]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    with pytest.raises(OSError):  # the revision process and its router are gone too
        urllib.request.urlopen(service.uri + "/", timeout=2)
