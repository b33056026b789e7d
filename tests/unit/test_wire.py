"""The one wire format: every message round-trips, attributes say what it is, and nothing
outside shared/domain/wire.py spells out a payload by hand."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from shared.domain.commands import NoticeKind, Notify
from shared.domain.errors import MalformedEvent
from shared.domain import events as ev
from shared.domain.wire import TYPES, decode, decode_event, encode, to_payload
from shared.testing.fakes import FakePublisher

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "shared" / "domain" / "wire.py"
# Tests may hand-build payloads (malformed ones above all); everything that runs may not.
CHECKED = ("shared", "functions", "local", "deploy", "bench")

EVERY_MESSAGE = [
    ev.ReleaseStarted("", "r-1"),
    ev.StageFinished("", "r-1", "lint", "r-1.lint.a1", ev.Outcome.FAILED, "exit 1", {"tests": 3, "nested": {"a": [1]}}),
    ev.ApprovalDecided("", "r-1", "approval", 2, "nonce-1", "a@example.com", True, 1_800_000_000.5, "ok", "Firefox"),
    ev.ChaosRequested("", "r-1", "qa@example.com"),
    ev.StageReplay("", "r-1", "unit", "replay-1", "dev@example.com", "flaky"),
    ev.Tick("", "r-1"),
    ev.LockGranted("", "r-1", "staging"),
    ev.Superseded("", "r-1", "prod", "r-2"),
    ev.CancelRequested("", "r-1", "ops@example.com", "wrong build", "req-1"),
    ev.BakeSkipRequested("", "r-1", "prod-smoke", "boss@example.com", "canary looks fine", "req-2"),
    ev.RolledBack("", "r-1", "prod-deploy", "web", "web-002", "web-001", "ops@example.com", "slow", "req-3"),
    ev.ReleaseNotice("r-1", NoticeKind.STAGE_FAILED, "lint", "lint failed: exit 1"),
]


@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: to_payload(m)["type"])
def test_every_message_round_trips_with_its_type_and_release_as_attributes(message):
    data, attributes = encode(message)
    assert attributes == {"type": to_payload(message)["type"], "release_id": "r-1"}
    decoded = decode("m-9", attributes, data)
    expected = message if isinstance(message, ev.ReleaseNotice) else type(message)(**{**message.__dict__, "id": "m-9"})
    assert decoded == expected


def test_every_type_has_a_message_in_the_round_trip():
    assert {to_payload(m)["type"] for m in EVERY_MESSAGE} == TYPES


def test_a_dict_cannot_be_published():
    with pytest.raises(TypeError, match="only typed messages"):
        FakePublisher().publish("pipeline-events", {"type": "release.started", "release_id": "r"})


def test_a_notice_is_not_an_event_for_the_dispatcher_and_a_notice_is_built_from_its_command():
    notice = ev.ReleaseNotice.of(Notify("r-1", NoticeKind.REFUSED, "unit", "replay refused"))
    data, attributes = encode(notice)
    assert json.loads(data) == {"type": "release.notice", "release_id": "r-1", "kind": "refused", "stage": "unit",
                                "message": "replay refused"}
    with pytest.raises(MalformedEvent, match="not an event for the dispatcher"):
        decode_event("m-1", attributes, data)


@pytest.mark.parametrize("payload, why", [
    (b"\xff", "not JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"type": "release.exploded", "release_id": "r"}', "unknown type"),
    (b'{"type": "stage.finished", "release_id": "r", "stage": "lint"}', "missing stage_run_id, outcome"),
    (b'{"type": "lock.granted", "release_id": "r", "environment": 7}', "environment must be a string"),
    (b'{"type": "release.notice", "release_id": "r", "kind": "party"}', "'party' is not a valid NoticeKind"),
])
def test_what_cannot_be_decoded_says_why(payload, why):
    with pytest.raises(MalformedEvent, match=why):
        decode("m-1", {}, payload)


def payload_literals(path: Path, root: Path = ROOT) -> list[str]:
    """Dict literals that spell out a message: a "type" key whose value is one of ours."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and key.value == "type"):
                continue
            spelled = isinstance(value, ast.Constant) and value.value in TYPES
            by_enum = isinstance(value, ast.Attribute) and value.attr == "value" and "EventType" in ast.unparse(value)
            if spelled or by_enum:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_payload_is_spelled_out_outside_the_wire_module():
    files = [p for folder in CHECKED for p in (ROOT / folder).rglob("*.py") if p != WIRE]
    assert len(files) > 50
    assert [hit for path in files for hit in payload_literals(path)] == []


def test_the_check_finds_a_hand_built_payload(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('publish("t", {"type": "lock.granted", "release_id": r})\nx = {"type": EventType.TICK.value}\n')
    assert len(payload_literals(sample, tmp_path)) == 2
