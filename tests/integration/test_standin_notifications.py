"""Build status notifications reach the Pub/Sub emulator in Cloud Build's own format."""
from __future__ import annotations

import json
import sys
import time
import uuid

import pytest
from google.cloud import pubsub_v1
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings
from shared.adapters.cloud_build_notification import event_from_build_notification
from shared.domain.events import stage_run_id

pytestmark = pytest.mark.emulators


@pytest.fixture
def setup(emulators, tmp_path):
    topic = f"cloud-builds-{uuid.uuid4().hex[:8]}"
    project = emulators["project"]
    cfg = StandInConfig(project=project, workspace=REPO_ROOT, pubsub_emulator_host=emulators["pubsub"],
                        builds_topic=topic, log_dir=tmp_path / "logs")
    with StandIn(cfg) as standin:
        subscriber = pubsub_v1.SubscriberClient()  # reaches the emulator through PUBSUB_EMULATOR_HOST
        subscription = subscriber.subscription_path(project, f"sub-{topic}")
        subscriber.create_subscription(name=subscription, topic=f"projects/{project}/topics/{topic}")
        settings = Settings(project=project, cloud_build_endpoint=standin.endpoint)
        yield standin, gcp_clients.cloud_build(settings), subscriber, subscription
        subscriber.close()


def pull(subscriber, subscription: str, count: int, timeout_s: float = 15) -> list:
    messages = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
            messages.extend(m.message for m in response.received_messages)
    return messages


def test_every_status_change_is_published_in_the_real_format(setup):
    standin, builds, subscriber, subscription = setup
    run_id = stage_run_id("r1", "lint", 1)
    step = cloudbuild_v1.BuildStep(name="local", entrypoint=sys.executable, args=["-c", "print('hi')"])
    operation = builds.create_build(project_id=standin.config.project, build=cloudbuild_v1.Build(
        steps=[step], tags=["rel-r1", f"run-{run_id}"]))
    build = operation.result(timeout=20)
    messages = pull(subscriber, subscription, 3)
    assert [m.attributes["status"] for m in messages] == ["QUEUED", "WORKING", "SUCCESS"]
    assert {m.attributes["buildId"] for m in messages} == {build.id}
    final = json.loads(messages[-1].data)
    # proto3 JSON like Cloud Build: camelCase, enum names, RFC 3339 times, unset fields left out.
    assert final["id"] == build.id and final["status"] == "SUCCESS"
    assert final["tags"] == ["rel-r1", f"run-{run_id}"]
    assert final["projectId"] == standin.config.project and final["logUrl"].startswith("http://127.0.0.1:")
    assert final["finishTime"].endswith("Z") and "statusDetail" not in final
    assert final["steps"][0]["name"] == "local"
    # The orchestrator's translation accepts it.
    event = event_from_build_notification(messages[-1].message_id, dict(messages[-1].attributes), final)
    assert event is not None and event.stage_run_id == run_id and event.result["build_id"] == build.id


def test_republish_sends_a_duplicate_with_the_given_status(setup):
    standin, builds, subscriber, subscription = setup
    operation = builds.create_build(project_id=standin.config.project, build=cloudbuild_v1.Build(
        steps=[cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["push"])], tags=["run-x"]))
    build_id = operation.metadata.build.id
    assert [m.attributes["status"] for m in pull(subscriber, subscription, 3)] == ["QUEUED", "WORKING", "FAILURE"]
    standin.publish_build_notification(build_id, "WORKING")  # late, out of order
    late = pull(subscriber, subscription, 1)
    assert [(m.attributes["buildId"], m.attributes["status"]) for m in late] == [(build_id, "WORKING")]
    assert json.loads(late[0].data)["status"] == "WORKING"
