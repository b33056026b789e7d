"""The stand-in serves the log files it wrote (builds, job executions) over HTTP on loopback,
and nothing else: the links builds and executions carry open in a browser (issue 15)."""
from __future__ import annotations

import http.client
import sys
import time
import urllib.parse

import pytest
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings

PROJECT, REGION = "logs-project", "europe-west3"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    config = StandInConfig(project=PROJECT, region=REGION, workspace=REPO_ROOT,
                           log_dir=tmp_path_factory.mktemp("standin-logs"))
    with StandIn(config) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, region=REGION, cloud_build_endpoint=standin.endpoint,
                    cloud_run_endpoint=standin.endpoint)


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as written (urllib would normalise some of it)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def a_finished_build(settings, standin, text: str) -> cloudbuild_v1.Build:
    step = cloudbuild_v1.BuildStep(name="local", entrypoint=sys.executable, args=["-c", f"print({text!r})"])
    operation = gcp_clients.cloud_build(settings).create_build(
        parent=f"projects/{PROJECT}/locations/{REGION}", build=cloudbuild_v1.Build(steps=[step]))
    return standin.finished_build(operation.metadata.build.id)


def test_a_build_log_url_is_served_over_http_with_what_the_steps_printed(settings, standin):
    build = a_finished_build(settings, standin, "hello from the build step")
    assert build.status == cloudbuild_v1.Build.Status.SUCCESS
    assert build.log_url.startswith("http://127.0.0.1:") and build.log_url.endswith(f"/logs/builds/{build.id}")
    status, headers, body = get(build.log_url)
    assert status == 200 and "hello from the build step" in body.decode()
    assert headers["Content-Type"] == "text/plain; charset=utf-8" and headers["X-Content-Type-Options"] == "nosniff"
    assert get(build.log_url, "HEAD")[:2][0] == 200


def test_a_job_execution_log_uri_is_its_own_log(settings, standin):
    parent = f"projects/{PROJECT}/locations/{REGION}"
    container = run_v2.Container(image="local", command=[sys.executable, "-c", "print('migrated 3 tables')"])
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    jobs = gcp_clients.run_jobs(settings)
    jobs.create_job(parent=parent, job=job, job_id="log-job").result(30)
    first = jobs.run_job(name=f"{parent}/jobs/log-job").result(30)
    second = jobs.run_job(name=f"{parent}/jobs/log-job").result(30)
    assert first.log_uri != second.log_uri  # each execution its own log, not one per job
    status, _, body = get(first.log_uri)
    assert status == 200 and body.decode().count("migrated 3 tables") == 1


def test_only_the_files_it_wrote_are_served_no_path_traversal(settings, standin):
    build = a_finished_build(settings, standin, "x")
    base = build.log_url.rsplit("/logs/", 1)[0]
    # a file in the log folder that no build, execution or revision wrote
    (standin.config.log_dir / "builds" / "planted.log").write_text("not yours")
    (standin.config.log_dir / "secret.txt").write_text("not yours either")
    for path in ("/logs/builds/planted", "/logs/builds/planted.log", f"/logs/builds/{build.id}.log",
                 f"/logs/builds/{build.id}/../planted", "/logs/builds/../secret.txt", "/logs/builds/..%2fsecret.txt",
                 "/logs/builds/%2e%2e/%2e%2e/secret.txt", "/logs/../secret.txt", "/secret.txt", "/etc/passwd",
                 f"//{standin.config.log_dir}/secret.txt", f"/logs/builds/{build.id}%00", "/logs/", "/"):
        status, _, body = get(base + path)
        assert status == 404 and b"not yours" not in body, path
    status, headers, _ = get(build.log_url, "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(build.log_url + "?download=1")[0] == 200  # a query string names the same log


def test_a_queued_build_has_a_link_before_it_wrote_anything(settings, standin):
    standin.set_outcome("build", "hang-for-log", "HANG")
    step = cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["version"])
    client = gcp_clients.cloud_build(settings)
    operation = client.create_build(parent=f"projects/{PROJECT}/locations/{REGION}",
                                    build=cloudbuild_v1.Build(steps=[step], tags=["hang-for-log"]))
    build = operation.metadata.build
    assert get(build.log_url)[0] == 200
    deadline = time.monotonic() + 10
    while b"does not run here" not in get(build.log_url)[2] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"outcome set for the stand-in: HANG" in get(build.log_url)[2]
    client.cancel_build(name=build.name)
