"""ID tokens for checks of private services: cached per audience until shortly before they expire,
a failure to mint is a transient error the probe reports, and a GET to a private service without a
token source never goes out unauthenticated."""
from __future__ import annotations

import pytest

from local.token_issuer import LocalTokenIssuer
from shared.adapters.http_prober import RequestsProber
from shared.adapters.id_token_source import REFRESH_BEFORE_S, CachedIdTokens
from shared.domain.errors import TransientError

ISSUER = LocalTokenIssuer()  # signs in-process; nothing listens


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_reused_per_audience_until_it_nearly_expires():
    clock, minted = Clock(), []

    def mint(audience: str) -> str:
        minted.append(audience)
        return ISSUER.mint("runtime@p.iam.gserviceaccount.com", audience, issued_at=clock.now, lifetime_s=3600)

    tokens = CachedIdTokens(mint, clock)
    first = tokens.token("https://web.example")
    assert tokens.token("https://web.example") == first
    tokens.token("https://api.example")
    assert minted == ["https://web.example", "https://api.example"]
    clock.now += 3600 - REFRESH_BEFORE_S + 1
    tokens.token("https://web.example")
    assert minted[-1] == "https://web.example" and len(minted) == 3


def test_a_failure_to_mint_is_transient_and_the_get_reports_it_without_calling():
    def mint(audience: str) -> str:
        raise OSError("metadata server unreachable")

    class NoSession:
        def get(self, *args, **kwargs):  # pragma: no cover - must not be called
            raise AssertionError("an unauthenticated GET went out")

    with pytest.raises(TransientError, match="no ID token for https://web.example: OSError"):
        CachedIdTokens(mint).token("https://web.example")
    answer = RequestsProber(NoSession(), CachedIdTokens(mint)).get("https://web.example/", 5, audience="https://web.example")
    assert answer["status"] is None and "metadata server unreachable" in answer["error"]
    assert RequestsProber(NoSession()).get("https://web.example/", 5, audience="https://web.example")["error"] == (
        "no ID token source for a private service")
