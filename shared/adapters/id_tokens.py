"""TokenVerifier with google-auth: a Google-signed ID token for this function's audience.

``google.oauth2.id_token.verify_token`` checks the RS256 signature against the
certificates at ``certs_url`` (Google's by default; the local stack's token issuer
serves its own on loopback), the audience and the expiry; the issuer is checked here
because verify_token does not. A token that does not verify answers 401; an issuer
whose certificates cannot be fetched is a transient failure (503, try again).
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.errors import RequestRefused, TransientError

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
CLOCK_SKEW_S = 10


class GoogleIdTokenVerifier:
    def __init__(self, audience: str, certs_url: str = GOOGLE_CERTS_URL,
                 issuers: tuple[str, ...] = ("https://accounts.google.com", "accounts.google.com")):
        self.audience = audience
        self.certs_url = certs_url or GOOGLE_CERTS_URL
        self.issuers = frozenset(i for i in issuers if i)
        self._request = None

    def verify(self, token: str) -> Mapping[str, Any]:
        from google.auth import exceptions
        from google.auth.transport import requests as transport
        from google.oauth2 import id_token

        if not self.audience:
            raise RequestRefused(503, "RELEASE_OPERATOR_AUDIENCE is not set: no token can be checked")
        if self._request is None:
            self._request = transport.Request()
        try:
            claims = id_token.verify_token(token, self._request, audience=self.audience,
                                           certs_url=self.certs_url, clock_skew_in_seconds=CLOCK_SKEW_S)
        except exceptions.TransportError as exc:
            raise TransientError(f"the token issuer's certificates could not be fetched: {exc}") from None
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise RequestRefused(401, f"ID token refused: {exc}") from None
        if claims.get("iss") not in self.issuers:
            raise RequestRefused(401, f"ID token refused: issuer {claims.get('iss')!r} is not trusted")
        return claims
