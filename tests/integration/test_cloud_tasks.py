"""Probes as Cloud Tasks: the real google-cloud-tasks client against the stand-in, which
POSTs each task to a receiver on loopback at its schedule time."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.api_core import exceptions as gexc

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.cloud_tasks import CloudTasksScheduler
from shared.app.config import Settings
from shared.domain.approval_tokens import Keyring
from shared.adapters.api_calls import ApiCaller, RetryPolicy
from shared.domain.errors import ConfigError, ExecutorError, TransientError
from shared.domain.probes import PROBE_SIGNATURE_HEADER, decode_task, first_probe_task
from shared.adapters.http_prober import RequestsProber
from shared.app.ports import SystemClock
from shared.app.probing import ProbeService
from shared.testing.fakes import FakePublisher, FakeStore

PROJECT, REGION = "tasks-project", "europe-west3"
QUEUE = f"projects/{PROJECT}/locations/{REGION}/queues/release-probes"
KEYS = Keyring.from_setting("k1:probe-test-secret-of-32-bytes-or-more")


@pytest.fixture(scope="module")
def receiver():
    got: list[dict] = []
    answers: list[int] = []  # statuses to answer first (then 200)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append({"at": time.time(), "body": body, "headers": self.headers})
            status = answers.pop(0) if answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", got, answers
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    config = StandInConfig(project=PROJECT, region=REGION, log_dir=tmp_path_factory.mktemp("tasks"),
                           task_queues=(QUEUE, QUEUE + "-gone"))
    with StandIn(config) as running:
        yield running


FAST = ApiCaller(RetryPolicy(initial_s=0.01, maximum_s=0.02, timeout_s=0.3, call_timeout_s=5))


def scheduler(standin, url, **overrides) -> CloudTasksScheduler:
    settings = Settings(project=PROJECT, region=REGION, cloud_tasks_endpoint=standin.endpoint, probe_url=url,
                        **overrides)
    return CloudTasksScheduler(settings, keyring=KEYS, caller=FAST)


def a_task(run: str, **changes):
    return first_probe_task(release_id="r", stage="migrate", stage_run_id=f"r.migrate.{run}", kind="job",
                            pipeline_digest="d" * 64, now=time.time(), timeout_s=60, handle={"execution": "e"})


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_probe_arrives_at_its_time_signed_and_only_once(standin, receiver):
    url, got, _ = receiver
    probes = scheduler(standin, url)
    task = a_task("a1")
    before = len(got)
    at = time.time() + 0.6
    assert probes.schedule(task, at) is True
    assert probes.schedule(task, at) is False  # same task id: ALREADY_EXISTS, nothing twice
    assert wait_for(lambda: len(got) > before)
    delivery = got[before]
    assert delivery["at"] >= at - 0.01  # not before its schedule time
    assert decode_task(delivery["body"], delivery["headers"][PROBE_SIGNATURE_HEADER], KEYS) == task
    assert delivery["headers"]["X-CloudTasks-QueueName"] == "release-probes"
    time.sleep(0.3)
    assert len(got) == before + 1
    assert probes.schedule(task, time.time()) is False  # also after it ran (the id stays used for an hour)


def test_a_probe_answered_500_is_retried(standin, receiver):
    url, got, answers = receiver
    answers.extend([500])
    before = len(got)
    assert scheduler(standin, url).schedule(a_task("a2"), time.time())
    assert wait_for(lambda: len(got) >= before + 2)
    assert [d["headers"]["X-CloudTasks-TaskRetryCount"] for d in got[before:before + 2]] == ["0", "1"]


def test_a_missing_queue_is_a_configuration_error(standin, receiver):
    """Cloud Tasks answers FAILED_PRECONDITION "Queue does not exist." (issue 23: unmapped on main)."""
    with pytest.raises(ConfigError, match=r"queues/nope does not exist \(Queue does not exist.\)"):
        scheduler(standin, receiver[0], probe_queue="nope").schedule(a_task("a3"), time.time())


# -- issue 23: each Cloud Tasks refusal reaches the stage as the README's table says ------------------
def probing(standin, url, **overrides):
    """The probe function's service with the real scheduler: a check whose GET fails schedules the next probe."""
    publisher = FakePublisher()
    probes = scheduler(standin, url, **overrides)
    return ProbeService(FakeStore(), {}, publisher, probes, RequestsProber(), SystemClock(), probes.settings), publisher


def a_check(run: str, url: str):
    return first_probe_task(release_id="r", stage="smoke", stage_run_id=f"r.smoke.{run}", kind="check",
                            pipeline_digest="d" * 64, now=time.time(), timeout_s=60,
                            handle={"url": url, "paths": ["/"], "window_s": 30})


def test_a_deleted_queue_is_a_configuration_error_and_the_probe_is_retried(standin, receiver):
    url = receiver[0]
    gone = f"projects/{PROJECT}/locations/{REGION}/queues/release-probes-gone"
    standin.remove_queue(gone)  # it existed (the fixture made it), then was deleted
    service, publisher = probing(standin, url, probe_queue="release-probes-gone")
    # the receiver answers GET with 501, so the window goes on and the next probe must be scheduled
    with pytest.raises(ConfigError, match="existed recently"):
        service.handle(a_check("c1", url))  # the probe function answers 500: Cloud Tasks retries the probe
    assert publisher.messages == []  # no stage is failed for a deployment fault


def test_resource_exhausted_is_transient_and_the_probe_is_retried(standin, receiver):
    url = receiver[0]
    standin.fail_next("CreateTask", grpc.StatusCode.RESOURCE_EXHAUSTED, message="Quota exceeded for quota metric "
                      "'Task creation requests' and limit 'Task creation requests per minute per queue'")
    service, publisher = probing(standin, url)
    with pytest.raises(TransientError, match="RESOURCE_EXHAUSTED: Quota exceeded"):
        service.handle(a_check("c2", url))
    assert publisher.messages == []
    assert "probe 1 scheduled" in service.handle(a_check("c2", url))  # once there is room again


def test_permission_denied_fails_the_stage_naming_the_permission(standin, receiver):
    url = receiver[0]
    standin.fail_next("CreateTask", grpc.StatusCode.PERMISSION_DENIED, message="Permission "
                      "'cloudtasks.tasks.create' denied on resource (or it may not exist).")
    service, publisher = probing(standin, url)
    assert "the stage failed" in service.handle(a_check("c3", url))
    (_, payload, _), = publisher.messages
    assert payload["outcome"] == "failed"
    assert "missing permission cloudtasks.tasks.create" in payload["reason"]


def test_an_unavailable_api_is_retried_then_transient(standin, receiver):
    standin.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE)
    assert scheduler(standin, receiver[0]).schedule(a_task("a4"), time.time() + 60) is True  # one blip: retried
    standin.fail_next("CreateTask", grpc.StatusCode.UNAVAILABLE, times=1000)
    try:
        with pytest.raises(TransientError, match="scheduling probe .* still failing after retries"):
            scheduler(standin, receiver[0]).schedule(a_task("a5"), time.time() + 60)
    finally:
        standin.clear_faults()


def test_a_refused_task_is_an_executor_error_naming_the_reason(standin, receiver):
    """Cloud Tasks refuses a task whose url is not http(s) (INVALID_ARGUMENT): our error, not Google's."""
    with pytest.raises(ExecutorError, match=r"release r, stage migrate: scheduling probe .*InvalidArgument.*"
                                            r"http:// or https://"):
        scheduler(standin, "ftp://127.0.0.1/probe").schedule(a_task("a6"), time.time() + 60)


def test_the_stand_in_refuses_what_cloud_tasks_refuses(standin, receiver):
    from google.cloud import tasks_v2

    client = gcp_clients.cloud_tasks(Settings(project=PROJECT, region=REGION, cloud_tasks_endpoint=standin.endpoint))
    http = tasks_v2.HttpRequest(url=receiver[0], body=b"{}")
    with pytest.raises(gexc.InvalidArgument, match="invalid task name"):
        client.create_task(parent=QUEUE, task=tasks_v2.Task(name=f"{QUEUE}/tasks/has.dot", http_request=http))
    with pytest.raises(gexc.InvalidArgument, match="100KB"):
        client.create_task(parent=QUEUE, task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(
            url=receiver[0], body=b"x" * (100 * 1024 + 1))))
    with pytest.raises(gexc.InvalidArgument, match="http:// or https://"):
        client.create_task(parent=QUEUE, task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url="ftp://127.0.0.1/")))
    with pytest.raises(gexc.FailedPrecondition, match="Queue does not exist."):
        client.create_task(parent=QUEUE + "x", task=tasks_v2.Task(http_request=http))
