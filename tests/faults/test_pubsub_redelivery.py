"""Fault 3: the Pub/Sub emulator redelivers an event after its ack deadline."""
from __future__ import annotations

import threading
import time

import pytest
from google.cloud import pubsub_v1

from shared.domain.gate import GateOutcome
from shared.domain.state import StageStatus
from shared.testing.fakes import FakeExecutor
from tests.faults import rig

pytestmark = pytest.mark.emulators
ACK_DEADLINE_S = 1  # set per message with modify_ack_deadline (a subscription's minimum is 10 s)


def test_event_redelivered_after_its_ack_deadline_changes_nothing_twice(emulators, unique_prefix):
    """Fault: the handler of s1's completion is slow (its start of s2 takes 2.5 s), longer
    than the message's ack deadline, so the Pub/Sub emulator hands the same message (same
    message id) out again while the first handler still works.
    Expected: the second delivery finds the transition already written with its batch in
    flight, waits for it and is acknowledged as a duplicate (or, should the batch take
    longer than 2 s, raises and is delivered again, then acknowledged); s2 is started once;
    after the acks the message is not delivered again; the release state is complete
    (s1 succeeded with its result, s2 running attempt 1, outbox empty)."""
    project = emulators["project"]
    settings = rig.settings_for(project, unique_prefix)
    store = rig.firestore_store(project, settings)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"{unique_prefix}events")
    subscription = subscriber.subscription_path(project, f"{unique_prefix}dispatch")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=10)

    slow = FakeExecutor()
    dispatcher = rig.dispatcher(store, {"build": slow}, settings)
    rid = rig.create_release(store)
    dispatcher.handle_message(f"{rid}-start", {}, rig.started(rid))
    slow.delay_s = 2.5
    publisher.publish(topic, rig.finished(rid, "s1")).result(10)

    def pull_one(timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = subscriber.pull(subscription=subscription, max_messages=1, timeout=5).received_messages
            if got:
                return got[0]
            time.sleep(0.1)
        return None

    deliveries, outcomes, lock = [], [], threading.Lock()

    def handle(received) -> None:
        message = received.message
        try:
            outcome = dispatcher.handle_message(message.message_id, dict(message.attributes), message.data).outcome
        except Exception as exc:  # noqa: BLE001 - not acknowledged: Pub/Sub redelivers
            with lock:
                outcomes.append(type(exc).__name__)
            return
        with lock:
            outcomes.append(outcome)
        subscriber.acknowledge(subscription=subscription, ack_ids=[received.ack_id])

    first = pull_one(10)
    assert first is not None
    deliveries.append(first)
    subscriber.modify_ack_deadline(subscription=subscription, ack_ids=[first.ack_id], ack_deadline_seconds=ACK_DEADLINE_S)
    worker = threading.Thread(target=handle, args=(first,))
    worker.start()
    while True:  # every redelivery is handled like the first; stop when none comes any more
        again = pull_one(ACK_DEADLINE_S + 3)
        if again is None:
            break
        deliveries.append(again)
        handle(again)
        assert len(deliveries) < 6, f"redelivered without end: {outcomes}"
    worker.join(10)

    assert len(deliveries) >= 2, "the emulator did not redeliver after the ack deadline"
    assert {d.message.message_id for d in deliveries} == {first.message.message_id}
    assert outcomes.count(GateOutcome.APPLIED) == 1
    assert set(outcomes) <= {GateOutcome.APPLIED, GateOutcome.DUPLICATE, "TransientError"}
    assert slow.starts == {f"{rid}.s1.a1": 1, f"{rid}.s2.a1": 1}
    state = store.get(rid)[0]
    assert state.stages["s1"].status is StageStatus.SUCCEEDED and state.stages["s1"].result["from"] == "completion"
    assert state.stages["s2"].status is StageStatus.RUNNING and state.stages["s2"].attempt == 1
    assert state.stages["s2"].result["fake_run"] == f"{rid}.s2.a1"
    assert state.outbox == [] and state.applied_events.count(first.message.message_id) == 1
