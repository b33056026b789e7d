"""The pure rules of probes: backoff, task ids, the signed task body."""
from __future__ import annotations

import json
import re

import pytest

from shared.domain.approval_tokens import Keyring
from shared.domain.errors import MalformedEvent
from shared.domain.probes import MAX_POLL_GAP_S, ProbeTask, decode_task, encode_task, first_probe_task, poll_delay

KEYS = Keyring.from_setting("k2:another-secret-of-32-bytes-or-more!!,k1:first-secret-of-32-bytes-or-more!!!")


def task(**changes) -> ProbeTask:
    base = first_probe_task(release_id="acme-web-1234", stage="staging-migrate",
                            stage_run_id="acme-web-1234.staging-migrate.a1", kind="job", pipeline_digest="d" * 64,
                            now=1000.0, timeout_s=120, handle={"execution": "projects/p/executions/e-1"})
    return ProbeTask(**{**base.to_dict(), **changes})


def test_polls_back_off_and_never_leave_a_gap_over_the_cap():
    delays = [poll_delay(n) for n in range(12)]
    assert delays[:4] == [1.0, 1.5, 2.25, 3.0]
    assert max(delays) == MAX_POLL_GAP_S == delays[-1] and MAX_POLL_GAP_S < 5


def test_task_ids_are_valid_cloud_tasks_ids_spread_by_a_hash_and_differ_per_probe():
    first, second = task(), task().next()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,500}", first.task_id)
    assert first.task_id != second.task_id and first.task_id[:8] == second.task_id[:8]
    other = task(stage_run_id="acme-web-1234.staging-migrate.a2")
    assert other.task_id[:8] != first.task_id[:8]  # not a sequential prefix


def test_a_signed_body_decodes_to_the_same_task_with_any_configured_key():
    body, signature = encode_task(task(seq=3), KEYS)
    assert signature.startswith("k2.")
    assert decode_task(body, signature, KEYS) == task(seq=3)
    older = Keyring.from_setting("k1:first-secret-of-32-bytes-or-more!!!")
    body1, sig1 = encode_task(task(), older)
    assert decode_task(body1, sig1, KEYS) == task()  # signed before a key rotation


@pytest.mark.parametrize("change", ["tamper", "unsigned", "unknown-key", "not-json"])
def test_a_forged_or_broken_body_is_refused(change):
    body, signature = encode_task(task(), KEYS)
    if change == "tamper":
        body = body.replace(b"staging-migrate", b"prod-migrate")
    elif change == "unsigned":
        signature = ""
    elif change == "unknown-key":
        signature = "k9." + signature.split(".", 1)[1]
    else:
        body = b"not json"
        signature = encode_task(task(), KEYS)[1]
    with pytest.raises(MalformedEvent):
        decode_task(body, signature, KEYS)


def test_a_task_with_missing_fields_or_an_unfollowed_kind_is_malformed():
    data = task().to_dict()
    with pytest.raises(MalformedEvent, match="release_id"):
        ProbeTask.from_dict({k: v for k, v in data.items() if k != "release_id"})
    with pytest.raises(MalformedEvent, match="only"):
        ProbeTask.from_dict({**data, "kind": "build"})
    assert ProbeTask.from_dict(json.loads(json.dumps(data))) == task()
