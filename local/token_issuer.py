"""A local stand-in for Google's ID-token issuer, on loopback.

It signs RS256 ID tokens with its own key and serves the matching X.509
certificate in the format of https://www.googleapis.com/oauth2/v1/certs
(``{"<key id>": "-----BEGIN CERTIFICATE-----…"}``), so the operator function
verifies them with the very google-auth call it uses on GCP, pointed at this
``certs_url``. Tests mint tokens in-process (``mint``) and forge bad ones (other
key, other audience, expired); ``relctl`` on the local stack asks ``POST /token``
for one, since there is no Google account to sign in with.

It is local-stack support: it issues a token to whoever asks on loopback, and the
operator function trusts it only where ``RELEASE_OPERATOR_CERTS_URL`` and
``RELEASE_OPERATOR_ISSUERS`` point at it.
"""
from __future__ import annotations

import datetime
import json
import time
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from local.json_http import JsonHandler, LoopbackServer

TOKEN_LIFETIME_S = 3600


def _key_and_certificate(common_name: str) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, cert.public_bytes(serialization.Encoding.PEM)


class LocalTokenIssuer:
    def __init__(self) -> None:
        self.key_id = uuid.uuid4().hex[:16]
        private, self.certificate = _key_and_certificate("local-token-issuer")
        self.signer = crypt.RSASigner.from_string(private, key_id=self.key_id)
        self._server: LoopbackServer | None = None
        self.url = ""

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def certs_url(self) -> str:
        return f"{self.url}/certs"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def mint(self, email: str, audience: str, *, verified: bool = True, lifetime_s: int = TOKEN_LIFETIME_S,
             issued_at: float | None = None, issuer: str | None = None, signer=None) -> str:
        now = int(issued_at if issued_at is not None else time.time())
        claims = {"iss": issuer or self.issuer, "aud": audience, "sub": f"local-{email}", "email": email,
                  "email_verified": verified, "iat": now, "exp": now + lifetime_s}
        return jwt.encode(signer or self.signer, claims).decode("ascii")

    def mint_claims(self, claims: dict, *, lifetime_s: int = TOKEN_LIFETIME_S, issued_at: float | None = None,
                    signer=None) -> str:
        """A token of any shape (e.g. GitHub Actions' OIDC claims, with GitHub's ``iss``), signed by this issuer."""
        now = int(issued_at if issued_at is not None else time.time())
        return jwt.encode(signer or self.signer, {**claims, "iat": now, "nbf": now, "exp": now + lifetime_s}).decode("ascii")

    # -- loopback HTTP ----------------------------------------------------------------
    def start(self) -> "LocalTokenIssuer":
        issuer = self

        class Handler(JsonHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path != "/certs":
                    return self._answer(404, {"error": "not found"})
                self._answer(200, {issuer.key_id: issuer.certificate.decode("ascii")})

            def do_POST(self):  # noqa: N802
                if self.path != "/token":
                    return self._answer(404, {"error": "not found"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                    email, audience = str(body["email"]), str(body["audience"])
                except (ValueError, KeyError, TypeError):
                    return self._answer(400, {"error": 'body must be {"email": ..., "audience": ...}'})
                self._answer(200, {"id_token": issuer.mint(email, audience)})

        self._server = LoopbackServer(Handler, "token-issuer")
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
