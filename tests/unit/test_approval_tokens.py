"""Approval link tokens: signing, tampering, expiry with an injected clock, key rotation."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json

import pytest

from shared.domain import approval_tokens as tokens
from shared.domain.approval_tokens import (
    ExpiredToken,
    Keyring,
    LinkClaims,
    MalformedToken,
    TamperedToken,
    UnknownKey,
    sign,
    verify,
)
from shared.domain.errors import ConfigError, PipelineError

OLD_SECRET = "old-secret-0123456789abcdef"
NEW_SECRET = "new-secret-fedcba9876543210"
NOW = 1_750_000_000.0
CLAIMS = LinkClaims(
    release_id="acme-noesis2-0123456789ab",
    stage="approval",
    attempt=1,
    approver="prod-approver@example.com",
    nonce="Nonce_abcdefghijklmnopqrstu",
    tag="v1.2.3-0123456",
    expires_at=NOW + 3600,
    digest="sha256:" + "a" * 64,
)


def ring(text: str = f"k2:{NEW_SECRET},k1:{OLD_SECRET}") -> Keyring:
    return Keyring.from_setting(text)


def test_github_signature_vector_compares_in_constant_time():
    # The same primitive (HMAC-SHA256 + compare_digest) as GitHub's X-Hub-Signature-256 test vector.
    digest = hmac.new(b"It's a Secret to Everybody", b"Hello, World!", hashlib.sha256).hexdigest()
    assert hmac.compare_digest(
        "sha256=" + digest, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_round_trip_and_format():
    token = sign(CLAIMS, ring())
    assert token.startswith("v1.k2.")
    assert all(c.isalnum() or c in "-_." for c in token)  # URL-safe as it stands
    assert verify(token, ring(), NOW) == CLAIMS


def test_verification_uses_compare_digest(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(tokens.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    verify(sign(CLAIMS, ring()), ring(), NOW)
    assert calls == [1]


def _resign_body(token: str, mutate) -> str:
    """Change a claim but keep the old signature: what an attacker without the key can do."""
    version, kid, body, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    mutate(data)
    new_body = base64.urlsafe_b64encode(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return ".".join([version, kid, new_body, signature])


@pytest.mark.parametrize(
    "field, value",
    [
        ("release_id", "acme-noesis2-ffffffffffff"),
        ("stage", "prod-deploy"),
        ("attempt", 2),
        ("approver", "mallory@example.com"),
        ("nonce", "Nonce_zzzzzzzzzzzzzzzzzzzzz"),
        ("tag", "v9.9.9-fffffff"),
        ("expires_at", NOW + 10 * 86400),
        ("digest", "sha256:" + "f" * 64),
    ],
)
def test_tampering_with_any_claim_is_refused(field, value):
    token = _resign_body(sign(CLAIMS, ring()), lambda d: d.__setitem__(field, value))
    with pytest.raises(TamperedToken) as caught:
        verify(token, ring(), NOW)
    assert caught.value.status == 403


def test_tampered_signature_and_swapped_key_id_are_refused():
    token = sign(CLAIMS, ring())
    version, kid, body, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    with pytest.raises(TamperedToken):
        verify(".".join([version, kid, body, flipped]), ring(), NOW)
    with pytest.raises(TamperedToken):  # a real key id, but not the one that signed
        verify(".".join([version, "k1", body, signature]), ring(), NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "v1.k2.body", "v2.k2.e30.AAAA", "v1.k2.e30.not*base64", "v1.k2.e30.AAAA.extra", "x" * 5000],
)
def test_malformed_tokens_are_a_400(token):
    with pytest.raises(MalformedToken) as caught:
        verify(token, ring(), NOW)
    assert caught.value.status == 400


def test_signed_but_malformed_claims_are_a_400():
    # Only someone holding a key can produce this; still it must not crash.
    kid, secret = "k2", NEW_SECRET.encode()
    body = base64.urlsafe_b64encode(b'{"release_id": 1}').rstrip(b"=").decode()
    signed = f"v1.{kid}.{body}"
    mac = base64.urlsafe_b64encode(hmac.new(secret, signed.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    with pytest.raises(MalformedToken):
        verify(f"{signed}.{mac}", ring(), NOW)


def test_expiry_uses_the_injected_time():
    token = sign(CLAIMS, ring())
    assert verify(token, ring(), CLAIMS.expires_at) == CLAIMS  # the last valid second
    with pytest.raises(ExpiredToken) as caught:
        verify(token, ring(), CLAIMS.expires_at + 0.001)
    assert caught.value.status == 410
    assert CLAIMS.release_id in str(caught.value)


def test_forged_expiry_is_a_signature_error_not_an_expiry():
    expired = dataclasses.replace(CLAIMS, expires_at=NOW - 1)
    token = _resign_body(sign(expired, ring()), lambda d: d.__setitem__("expires_at", NOW + 999))
    with pytest.raises(TamperedToken):
        verify(token, ring(), NOW)


def test_rotation_keeps_links_of_the_previous_key_valid():
    before = Keyring.from_setting(f"k1:{OLD_SECRET}")
    old_link = sign(CLAIMS, before)
    after = ring()  # k2 put in front, k1 still listed
    assert verify(old_link, after, NOW) == CLAIMS
    new_link = sign(CLAIMS, after)
    assert new_link.split(".")[1] == "k2"
    with pytest.raises(UnknownKey):  # a link of the new key cannot be checked by the old ring
        verify(new_link, before, NOW)
    retired = Keyring.from_setting(f"k2:{NEW_SECRET}")  # k1 removed: its links stop working
    with pytest.raises(UnknownKey) as caught:
        verify(old_link, retired, NOW)
    assert caught.value.status == 403


def test_errors_share_the_base_and_never_show_secrets():
    assert all(issubclass(e, PipelineError) for e in (MalformedToken, TamperedToken, UnknownKey, ExpiredToken))
    token = sign(CLAIMS, ring())
    problems = []
    for bad, keys in [(token[:-2] + "xx", ring()), (token, Keyring.from_setting(f"k9:{OLD_SECRET}"))]:
        with pytest.raises(tokens.TokenError) as caught:
            verify(bad, keys, NOW)
        problems.append(str(caught.value))
    assert not any(s in p for p in problems for s in (OLD_SECRET, NEW_SECRET))
    assert OLD_SECRET not in repr(ring()) and NEW_SECRET not in repr(ring())


@pytest.mark.parametrize(
    "setting, words",
    [
        ("", "at least one"),
        ("k1", "item 1 is not 'kid:secret'"),
        (f"k1:{OLD_SECRET},k1:{NEW_SECRET}", "listed twice"),
        ("k1:short", "shorter than 16 bytes"),
        (f"bad.kid:{OLD_SECRET}", "key id"),
    ],
)
def test_keyring_setting_is_validated_without_echoing_secrets(setting, words):
    with pytest.raises(ConfigError) as caught:
        Keyring.from_setting(setting)
    assert words in str(caught.value)
    assert "short" not in str(caught.value).replace("shorter", "") and OLD_SECRET not in str(caught.value)
