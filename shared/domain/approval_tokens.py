"""Signed approval-link tokens: pure, no clock and no I/O inside.

Wire format (every part URL-safe, so the token needs no escaping in a query)::

    v1.<kid>.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "v1.<kid>.<claims>"))>

The key id travels in clear so verification picks the key without trying them all;
it is covered by the signature, so swapping it only breaks the token. New tokens are
signed with the first key of the ring; any listed key verifies, which lets a new key
be put in front while links signed with the previous one stay valid until they expire.

Checks run in this order and the first failure wins: shape (MalformedToken, 400) >
key id (UnknownKey, 403) > signature (TamperedToken, 403) > claims shape
(MalformedToken, 400) > expiry (ExpiredToken, 410). Claims are only read after the
signature matched, so a forged token never gets as far as its expiry being judged.
A bad signature is a 403, not a 400: the request is well-formed but not authorised.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from shared.domain.errors import ConfigError, PipelineError

VERSION = "v1"
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_TOKEN_CHARS = 2048
MIN_SECRET_BYTES = 16


class TokenError(PipelineError):
    """An approval link token was refused; ``status`` is the HTTP answer for it."""

    status = 400


class MalformedToken(TokenError):
    status = 400


class UnknownKey(TokenError):
    status = 403


class TamperedToken(TokenError):
    status = 403


class ExpiredToken(TokenError):
    status = 410


@dataclass(frozen=True)
class LinkClaims:
    """What one approval link authorises: one decision by one approver on one attempt."""

    release_id: str
    stage: str
    attempt: int
    approver: str
    nonce: str
    tag: str
    expires_at: float
    digest: str = ""  # the image digest the approver sees on the confirm page


class Keyring:
    """Signing keys, newest first. ``repr`` never shows a secret."""

    def __init__(self, keys: list[tuple[str, bytes]]):
        if not keys:
            raise ConfigError("approval keys: at least one 'kid:secret' is needed")
        seen: set[str] = set()
        for kid, secret in keys:
            if not KEY_ID.match(kid):
                raise ConfigError(f"approval keys: key id {kid!r} must be 1-32 letters, digits, '-' or '_'")
            if kid in seen:
                raise ConfigError(f"approval keys: key id {kid!r} is listed twice")
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(f"approval keys: the secret of {kid!r} is shorter than {MIN_SECRET_BYTES} bytes")
            seen.add(kid)
        self._keys = dict(keys)
        self.current_kid = keys[0][0]

    @classmethod
    def from_setting(cls, text: str) -> "Keyring":
        """Parse ``Settings.approval_keys``: ``"kid:secret,kid2:secret2"``, newest first."""
        keys = []
        for position, item in enumerate(filter(None, (p.strip() for p in (text or "").split(","))), 1):
            kid, sep, secret = item.partition(":")
            if not sep or not kid.strip() or not secret:
                # Position only: the item itself would contain the secret.
                raise ConfigError(f"RELEASE_APPROVAL_KEYS: item {position} is not 'kid:secret'")
            keys.append((kid.strip(), secret.encode()))
        return cls(keys)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def secret(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self._keys)!r})"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def sign(claims: LinkClaims, keyring: Keyring) -> str:
    """A token for ``claims``, signed with the newest key."""
    _check_claims(asdict(claims))
    body = json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode()
    kid = keyring.current_kid
    signed_part = f"{VERSION}.{kid}.{_b64encode(body)}"
    return f"{signed_part}.{_b64encode(_mac(keyring.secret(kid), signed_part))}"


def verify(token: str, keyring: Keyring, now: float) -> LinkClaims:
    """The claims of a genuine, unexpired token; raises a TokenError subclass otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise MalformedToken("the approval link has no readable token")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise MalformedToken("the approval link token is not in the expected format")
    _, kid, body_text, signature_text = parts
    secret = keyring.secret(kid)
    if secret is None:
        # The kid is echoed only when it has the shape of a kid, never as raw input.
        shown = kid if KEY_ID.match(kid) else "(invalid)"
        raise UnknownKey(f"the approval link was signed with key {shown!r}, which is not configured")
    try:
        signature = _b64decode(signature_text)
    except (ValueError, binascii.Error):
        raise MalformedToken("the approval link signature is not base64url") from None
    expected = _mac(secret, f"{VERSION}.{kid}.{body_text}")
    if not hmac.compare_digest(signature, expected):
        raise TamperedToken("the approval link signature does not match; the link was altered")
    try:
        data = json.loads(_b64decode(body_text))
        claims = LinkClaims(**_check_claims(data))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise MalformedToken(f"the approval link claims are unreadable ({exc})") from None
    if now > claims.expires_at:
        raise ExpiredToken(
            "the approval link has expired", release_id=claims.release_id, stage=claims.stage
        )
    return claims


def _check_claims(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or set(data) != set(LinkClaims.__dataclass_fields__):
        raise ValueError("unexpected set of claims")
    for key in ("release_id", "stage", "approver", "tag"):
        if not isinstance(data[key], str) or not data[key]:
            raise ValueError(f"{key} must be a non-empty string")
    if not isinstance(data["digest"], str):
        raise ValueError("digest must be a string")
    if not isinstance(data["nonce"], str) or not NONCE.match(data["nonce"]):
        raise ValueError("nonce has the wrong shape")
    if not isinstance(data["attempt"], int) or isinstance(data["attempt"], bool) or data["attempt"] < 1:
        raise ValueError("attempt must be a positive integer")
    if not isinstance(data["expires_at"], (int, float)) or isinstance(data["expires_at"], bool):
        raise ValueError("expires_at must be a number")
    return data
