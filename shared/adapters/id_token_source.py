"""IdTokenSource: Google ID tokens for calling a private Cloud Run service as this function's account.

On GCP ``google.oauth2.id_token.fetch_id_token`` asks the metadata server for a token of the
runtime account with the given audience (Cloud Run: "the aud claim set to the URL of the
receiving service", https://cloud.google.com/run/docs/authenticating/service-to-service); the
receiving service admits it when that account holds roles/run.invoker there (deploy/ grants it).
On the local stack there is no metadata server: the local token issuer mints the token for the
account named in RELEASE_ID_TOKEN_ACCOUNT. Tokens are cached per audience until shortly before
they expire (a bake probes every few seconds; each token lives an hour).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from google.auth import jwt

from shared.domain.errors import TransientError

REFRESH_BEFORE_S = 300


class CachedIdTokens:
    def __init__(self, mint: Callable[[str], str], clock: Callable[[], float] = time.time):
        self._mint = mint
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token(self, audience: str) -> str:
        with self._lock:
            cached = self._cache.get(audience)
        if cached and cached[1] - REFRESH_BEFORE_S > self._clock():
            return cached[0]
        try:
            token = self._mint(audience)
        except Exception as exc:  # noqa: BLE001 - any failure to mint: the probe reports it, the next one retries
            raise TransientError(f"no ID token for {audience}: {type(exc).__name__}: {exc}") from None
        expires = float(jwt.decode(token, verify=False).get("exp", 0))
        with self._lock:
            self._cache[audience] = (token, expires)
        return token


def google_id_tokens() -> CachedIdTokens:
    """The function's own account, through the metadata server (or any google-auth credentials)."""

    def mint(audience: str) -> str:
        from google.auth.transport.requests import Request  # imported on first use: most checks are public
        from google.oauth2 import id_token

        return id_token.fetch_id_token(Request(), audience)

    return CachedIdTokens(mint)


def local_issuer_id_tokens(token_url: str, account: str) -> CachedIdTokens:
    """The local stack: its token issuer (local/token_issuer.py) mints for ``account``."""
    import requests

    def mint(audience: str) -> str:
        answer = requests.post(token_url, json={"email": account, "audience": audience}, timeout=5)
        answer.raise_for_status()
        return str(answer.json()["id_token"])

    return CachedIdTokens(mint)
