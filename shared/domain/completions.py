"""Signed completions: a ``stage.finished`` counts only when our own functions signed it.

Who may publish on ``pipeline-events`` is an IAM setting, not a fact the dispatcher can
see, and the run's id (with its secret) is readable wherever the run is (the build's
tags, the job's environment). So a completion is a claim until its signature checks:
HMAC-SHA256 over the canonical JSON of what it says (release, stage, run, outcome,
reason, result), under a key derived from the link keys (Secret Manager, rotated by key
id exactly like the approval links: new signatures use the first key, any listed key
verifies). The derivation keeps the three uses apart: a probe-task or link signature
never passes for a completion's, nor the other way round.

Signature value: ``<kid>.<hex HMAC>``. Pure: no clock, no I/O.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

from shared.domain.approval_tokens import KEY_ID, Keyring
from shared.domain.events import StageFinished

PURPOSE = b"release-completion-v1"


def _key(secret: bytes) -> bytes:
    return hmac.new(secret, PURPOSE, hashlib.sha256).digest()


def _signed_part(event: StageFinished) -> bytes:
    # The same bytes before publishing and after a JSON round trip (sorted keys, no spaces).
    claims = {"release_id": event.release_id, "stage": event.stage, "stage_run_id": event.stage_run_id,
              "outcome": event.outcome.value, "reason": event.reason, "result": dict(event.result)}
    return json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


def _mac(secret: bytes, event: StageFinished) -> str:
    return hmac.new(_key(secret), _signed_part(event), hashlib.sha256).hexdigest()


def sign_finish(event: StageFinished, keyring: Keyring) -> StageFinished:
    """The completion with its signature, made with the newest key."""
    kid = keyring.current_kid
    return dataclasses.replace(event, signature=f"{kid}.{_mac(keyring.secret(kid), event)}")


def unsigned_reason(event: StageFinished, keyring: Keyring | None) -> str:
    """Why this completion is not one our functions signed ("" when it is)."""
    if keyring is None:
        return "no completion key is configured (RELEASE_APPROVAL_KEYS), so no completion can be checked"
    kid, _, mac = (event.signature or "").partition(".")
    if not kid or not mac:
        return "the completion is not signed"
    secret = keyring.secret(kid)
    if secret is None:
        shown = kid if KEY_ID.match(kid) else "(invalid)"
        return f"the completion is signed with key {shown!r}, which is not configured"
    if not hmac.compare_digest(mac.encode(), _mac(secret, event).encode()):
        return "the completion's signature does not match what it says"
    return ""
