"""Ack or retry at the edge (shared/app/edge.py), and the one dead-letter store's API, on the fakes."""
from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

import pytest

from shared.app import edge
from shared.app.config import Settings
from shared.app.dead_letters import DeadLetterNotFound, DeadLetters
from shared.domain.errors import (
    ConfigError,
    DefinitionError,
    MalformedEvent,
    PipelineError,
    StaleWrite,
    TransientError,
)
from shared.domain.events import Outcome, StageFinished
from shared.domain.wire import encode
from shared.testing.fakes import FakeClock, FakeDeadLetters, FakePublisher

SETTINGS = Settings()
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def letters():
    return DeadLetters(FakeDeadLetters(), FakePublisher(), FakeClock(), SETTINGS)


def push(data: bytes, **attributes: str) -> dict:
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "m"}}


def fails_with(error: Exception):
    def handle(event_id, attributes, data):
        raise error
    return handle


@pytest.mark.parametrize("error, acknowledged", [
    (MalformedEvent("bad"), True),
    (TransientError("down"), False),
    (StaleWrite("raced"), False),
    (ConfigError("RELEASE_X is missing"), False),
    (DefinitionError("stage 3: unknown kind"), False),
    (KeyError("bug"), False),
    (PipelineError("anything else we raise"), False),
])
def test_each_error_class_is_acknowledged_or_retried_by_the_table(letters, error, acknowledged):
    if acknowledged:
        assert edge.deliver("e1", push(b"{}"), fails_with(error), lambda: letters, "dispatch") is None
    else:
        with pytest.raises(type(error)):
            edge.deliver("e1", push(b"{}"), fails_with(error), lambda: letters, "dispatch")
    assert [d.id for d in letters.list()] == (["e1"] if acknowledged else [])


def test_a_setting_the_operator_must_fix_is_logged_as_an_error_and_kept_for_redelivery(letters, caplog):
    with caplog.at_level(logging.WARNING, logger="edge"), pytest.raises(ConfigError):
        edge.deliver("e2", push(b"{}"), fails_with(ConfigError("RELEASE_APPROVAL_KEYS: item 1 is not 'kid:secret'")),
                     lambda: letters, "dispatch")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "NOT acknowledged" in record.getMessage()
    assert "nothing is lost" in record.getMessage()


@pytest.mark.parametrize("envelope, why", [
    ({"no": "message"}, "has no Pub/Sub message"),
    ({"message": {"data": "%%%"}}, "not base64"),
    ({"message": {"data": "", "attributes": {"n": 1}}}, "not a map of strings"),
])
def test_an_envelope_that_is_not_a_pubsub_push_is_kept_once_with_the_reason(letters, envelope, why):
    for _ in range(2):
        assert edge.deliver("e3", envelope, fails_with(AssertionError("never called")), lambda: letters, "dispatch") is None
    (letter,) = letters.list()
    assert why in letter.reason and letter.source == "dispatch" and letter.data


def test_malformed_data_is_kept_with_its_bytes_and_attributes(letters):
    edge.deliver("e4", push(b"not json", type="stage.finished"), lambda *m: edge_decode(*m), lambda: letters, "dispatch")
    (letter,) = letters.list()
    assert "not JSON" in letter.reason and letter.data == b"not json" and letter.attributes == {"type": "stage.finished"}


def edge_decode(event_id, attributes, data):
    from shared.domain.wire import decode_event

    return decode_event(event_id, attributes, data)


def gave_up(data: bytes, message_id: str, count: str = "10") -> tuple[str, dict, bytes]:
    """A message as Pub/Sub forwards it to the dead-letter topic (the emulator adds the same attributes)."""
    return message_id, {"type": "stage.finished", "release_id": "r-1",
                        "CloudPubSubDeadLetterSourceDeliveryCount": count,
                        "CloudPubSubDeadLetterSourceSubscription": "eventarc-dispatch-sub",
                        "CloudPubSubDeadLetterSourceSubscriptionProject": "acme",
                        "CloudPubSubDeadLetterSourceTopicPublishTime": "2026-11-30T20:15:50.748Z"}, data


FINISHED = StageFinished("", "r-1", "lint", "r-1.lint.a1", Outcome.SUCCEEDED, "", {"tests": 3})


def test_what_pubsub_gave_up_on_is_drained_into_the_store_once_and_re_driven_once(letters):
    data, _ = encode(FINISHED)
    letters.drain(*gave_up(data, "dlq-1"))
    letters.drain(*gave_up(data, "dlq-2", count="11"))  # Pub/Sub may forward a message twice
    (letter,) = letters.list()
    assert letter.source == "pubsub-dead-letter-topic"
    assert letter.reason == "Pub/Sub gave up after 10 delivery attempts on subscription eventarc-dispatch-sub"
    message_id = letters.redrive(letter.id)
    ((topic, payload, attributes),) = letters.publisher.messages
    assert topic == SETTINGS.events_topic and payload["stage_run_id"] == "r-1.lint.a1" and payload["result"] == {"tests": 3}
    assert not any(k.startswith("CloudPubSub") for k in attributes)
    assert letters.store.get(letter.id).redriven_as == message_id
    with pytest.raises(PipelineError, match="re-driven already"):
        letters.redrive(letter.id)


def test_a_letter_that_still_cannot_be_decoded_is_not_re_driven(letters):
    letters.keep("bad", "data is not JSON", "dispatch", b"not json")
    with pytest.raises(PipelineError, match="still cannot be decoded: .*not JSON"):
        letters.redrive("bad")
    with pytest.raises(DeadLetterNotFound):
        letters.redrive("nope")
    assert letters.publisher.messages == [] and letters.store.get("bad").redriven_as == ""


def test_the_list_is_newest_first(letters):
    for n in range(3):
        letters.keep(f"l{n}", "why", "dispatch")
        letters.clock.advance(1)
    assert [d.id for d in letters.list(limit=2)] == ["l2", "l1"]


def test_the_readme_table_names_every_rule_of_the_code_table():
    text = README.read_text()
    section = text[text.index("## Ack or retry"):]
    section = section[:section.index("\n## ", 4)]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = [re.match(r"\| `(\w+)`", row).group(1) for row in rows]
    assert named == [rule.error.__name__ for rule in edge.ACK_OR_RETRY]
    for row, rule in zip(rows, edge.ACK_OR_RETRY):
        assert ("acknowledged" in row) == rule.acknowledge, row
