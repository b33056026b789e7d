"""Completions on the real topic (Pub/Sub emulator) into the dispatcher over Firestore.

Why: anyone who may publish on ``pipeline-events`` and can read a run's id (the build's
tags, the job's environment, the release document) could complete the running stage with
``stage.finished`` and any result (``tests: 1000``). A completion now counts only when our
functions signed it (shared/domain/completions.py); a forged one is dead-lettered with its
reason and changes nothing."""
from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from shared.adapters.pubsub_publisher import PubSubPublisher
from shared.domain.events import Outcome, ReleaseStarted, StageFinished
from shared.domain.gate import GateOutcome
from shared.domain.state import StageStatus, new_release
from tests.integration.dispatch_helpers import make_rig
from tests.unit.gate_helpers import PIPELINE, PUSHER

pytestmark = pytest.mark.emulators


@pytest.fixture
def wired(emulators, unique_prefix):
    """A rig whose events topic is a real emulator topic with a pull subscription standing in
    for the dispatcher's push subscription."""
    rig = make_rig(emulators["project"], unique_prefix)
    settings = rig.dispatcher.settings
    publisher = PubSubPublisher(settings)
    topic = publisher.client.topic_path(emulators["project"], settings.events_topic)
    try:
        publisher.client.create_topic(name=topic)
    except gexc.AlreadyExists:
        pass
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(emulators["project"], f"{unique_prefix}dispatch")
    subscriber.create_subscription(name=subscription, topic=topic)
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="f0" * 20, version="1.0.0",
                        pushed_by=PUSHER, now=rig.clock.now(), run_key="k" * 64)
    rig.store.save_pipeline(PIPELINE)
    assert rig.store.create(state)
    rig.dispatcher.handle(ReleaseStarted("start", state.release_id))

    def deliver_one():
        """Pull the next message and hand it to the dispatcher as the push subscription would."""
        for _ in range(20):
            response = subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
            for received in response.received_messages:
                subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])
                message = received.message
                return rig.dispatcher.handle_message(message.message_id, dict(message.attributes), message.data)
        raise AssertionError("nothing arrived on the topic")

    yield rig, state.release_id, publisher, deliver_one
    subscriber.delete_subscription(subscription=subscription)


def current_run(rig, release_id: str, stage: str = "lint") -> str:
    st = rig.state(release_id).stages[stage]
    assert st.status is StageStatus.RUNNING and st.stage_run_id.count(".") == 3, "the run id carries its secret"
    return st.stage_run_id


def test_a_forged_completion_with_the_right_run_id_does_not_complete_the_stage(wired):
    rig, rid, publisher, deliver_one = wired
    run = current_run(rig, rid)  # what a reader of the build's tags knows
    publisher.publish(rig.dispatcher.settings.events_topic,
                      StageFinished("", rid, "lint", run, Outcome.SUCCEEDED, "", {"tests": 1000}))
    decision = deliver_one()
    assert decision.outcome is GateOutcome.REFUSED and "not signed" in decision.reason
    lint = rig.state(rid).stages["lint"]
    assert lint.status is StageStatus.RUNNING and "tests" not in lint.result
    letters = rig.dead_letters.list()
    assert [letter.reason for letter in letters] == ["stage.finished refused: the completion is not signed"]


def test_the_genuine_completion_our_functions_sign_completes_it(wired):
    from shared.testing.fakes import signing

    rig, rid, publisher, deliver_one = wired
    run = current_run(rig, rid)
    signing(publisher).publish(rig.dispatcher.settings.events_topic,
                               StageFinished("", rid, "lint", run, Outcome.SUCCEEDED, "", {"tests": 12}))
    assert deliver_one().outcome is GateOutcome.APPLIED
    lint = rig.state(rid).stages["lint"]
    assert lint.status is StageStatus.SUCCEEDED and lint.result["tests"] == 12
    assert rig.dead_letters.list() == []
