"""Signed completions (shared/domain/completions.py): sign, check, rotate, refuse."""
from __future__ import annotations

import dataclasses
import json

import pytest

from shared.domain.approval_tokens import Keyring
from shared.domain.completions import sign_finish, unsigned_reason
from shared.domain.events import Outcome, StageFinished
from shared.domain.probes import encode_task, first_probe_task
from shared.domain.wire import decode_event, encode

NEW, OLD = "k2:newer-link-key-of-32-bytes-or-more!", "k1:older-link-key-of-32-bytes-or-more!"
KEYS = Keyring.from_setting(f"{NEW},{OLD}")
RUN = "acme-app-1234.e2e.a1.0123456789abcdef0123"
EVENT = StageFinished("", "acme-app-1234", "e2e", RUN, Outcome.SUCCEEDED, "", {"tests": 12, "ratio": 0.25,
                                                                              "images": [{"digest": "sha256:ab"}]})


def test_a_signed_completion_checks_after_a_trip_over_the_wire():
    event = sign_finish(EVENT, KEYS)
    assert event.signature.startswith("k2.")
    data, attributes = encode(event)
    assert unsigned_reason(decode_event("m-1", attributes, data), KEYS) == ""


def test_a_completion_signed_before_a_key_rotation_still_checks_and_a_retired_key_does_not():
    older = sign_finish(EVENT, Keyring.from_setting(OLD))
    assert unsigned_reason(older, KEYS) == ""
    retired = Keyring.from_setting(NEW)
    assert "key 'k1', which is not configured" in unsigned_reason(older, retired)


@pytest.mark.parametrize("change, why", [
    ({"signature": ""}, "not signed"),
    ({"outcome": Outcome.FAILED}, "does not match"),
    ({"result": {"tests": 1000}}, "does not match"),
    ({"stage_run_id": RUN.replace("a1", "a2")}, "does not match"),
    ({"reason": "faked"}, "does not match"),
])
def test_a_completion_that_says_anything_else_than_what_was_signed_is_refused(change, why):
    forged = dataclasses.replace(sign_finish(EVENT, KEYS), **change)
    assert why in unsigned_reason(forged, KEYS)


def test_no_other_signature_made_with_the_same_keys_passes_for_a_completion():
    """A probe task's signature (same link keys, another derived key) and a bare HMAC under the
    link key itself are not a completion's."""
    import hashlib
    import hmac

    _, probe_signature = encode_task(first_probe_task(
        release_id="acme-app-1234", stage="e2e", stage_run_id=RUN, kind="job", pipeline_digest="d" * 64,
        now=0.0, timeout_s=60, handle={}), KEYS)
    assert "does not match" in unsigned_reason(dataclasses.replace(EVENT, signature=probe_signature), KEYS)
    claims = json.dumps({"release_id": EVENT.release_id, "stage": "e2e", "stage_run_id": RUN, "outcome": "succeeded",
                         "reason": "", "result": dict(EVENT.result)}, sort_keys=True, separators=(",", ":")).encode()
    raw = hmac.new(KEYS.secret("k2"), claims, hashlib.sha256).hexdigest()
    assert "does not match" in unsigned_reason(dataclasses.replace(EVENT, signature=f"k2.{raw}"), KEYS)


def test_without_configured_keys_every_completion_is_refused():
    assert "no completion key" in unsigned_reason(sign_finish(EVENT, KEYS), None)
