"""Workload Identity Federation on loopback: Security Token Service (``POST /v1/token``) and IAM
Credentials (``POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken``), as google-auth's
identity-pool credentials call them (google/oauth2/sts.py, google/auth/impersonated_credentials.py),
configured from deploy/'s plan: its provider (issuer, attribute mapping, attribute condition) and
its roles/iam.workloadIdentityUser bindings.

What Google does and this does too:
- STS takes an RFC 8693 token exchange of a JWT whose ``aud`` is one of the provider's allowed
  audiences (by default ``https://iam.googleapis.com/`` + the provider's name), signed by the
  issuer's keys and unexpired; an audience naming no provider is ``invalid_target``.
- It maps the claims with the provider's CEL mapping, then evaluates its condition; a false
  condition is 400 ``unauthorized_client``, "The given credential is rejected by the attribute
  condition." (the answer google-auth's OAuthError quotes, e.g. circleci/circleci-docs#8541); a
  stale token ``invalid_grant`` "ID Token issued at N is stale to sign-in." (fullsend-ai/fullsend#705).
- generateAccessToken needs roles/iam.workloadIdentityUser on the account for a principal the
  federated token is (``principalSet://…/attribute.NAME/VALUE`` or ``principal://…/subject/S``),
  else 403 PERMISSION_DENIED "Permission 'iam.serviceAccounts.getAccessToken' denied on resource
  (or it may not exist)."

The issuer is GitHub's URI from the plan, but its keys are the local issuer's (``certs``): the
local issuer mints GitHub-shaped tokens (deploy/wif.py's ``github_claims``). The access token
handed out is a self-signed JWT of the account's local key (local/standin/identity.py), so the
stand-in takes it as that account, as Google's APIs take the real one.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from google.auth import exceptions as auth_exceptions
from google.auth import crypt, jwt

from deploy.wif import evaluate
from local.json_http import JsonHandler, LoopbackServer

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_LIFETIME_S = 3600
WIF_USER = "roles/iam.workloadIdentityUser"
GENERATE = re.compile(r"^/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken$")
DENIED = "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
REJECTED = "The given credential is rejected by the attribute condition."
INVALID_TARGET = ('The target service indicated by the "audience" parameters is invalid. This might either be '
                  "because the pool or provider is disabled or deleted or because it doesn't exist.")


def _flag(args: tuple[str, ...], name: str) -> str:
    prefix = f"--{name}="
    return next((a[len(prefix):] for a in args if a.startswith(prefix)), "")


@dataclass(frozen=True)
class Provider:
    """One OIDC provider of a pool and the workloadIdentityUser bindings that name its pool."""

    name: str  # projects/N/locations/global/workloadIdentityPools/POOL/providers/ID
    issuer: str
    mapping: dict[str, str]
    condition: str
    bindings: dict[str, tuple[str, ...]]  # service account e-mail -> members

    @property
    def pool(self) -> str:
        return self.name.split("/providers/", 1)[0]

    @property
    def audience(self) -> str:  # what google-auth's credential config names (the STS `audience`)
        return f"//iam.googleapis.com/{self.name}"

    @property
    def allowed_audience(self) -> str:  # the subject token's `aud` when no allowed audiences are set
        return f"https://iam.googleapis.com/{self.name}"

    @classmethod
    def from_plan(cls, plan, project_number: str) -> "Provider":
        """The provider and bindings exactly as deploy/model.py's plan creates them."""
        provider = next(r for r in plan.resources if r.kind == "wif-provider")
        args = tuple(a.replace("${PROJECT_NUMBER}", project_number) for a in provider.create)
        pool = _flag(args, "workload-identity-pool")
        # gcloud's --attribute-mapping is KEY=VALUE,KEY=VALUE (deploy/wif.py keeps commas out of values)
        mapping = dict(pair.split("=", 1) for pair in _flag(args, "attribute-mapping").split(","))
        bindings: dict[str, list[str]] = {}
        for binding in plan.bindings:
            if binding.role == WIF_USER:
                bindings.setdefault(binding.target, []).append(binding.member.replace("${PROJECT_NUMBER}", project_number))
        return cls(name=f"projects/{project_number}/locations/global/workloadIdentityPools/{pool}/providers/{provider.name}",
                   issuer=_flag(args, "issuer-uri"), mapping=mapping, condition=_flag(args, "attribute-condition"),
                   bindings={k: tuple(v) for k, v in bindings.items()})


@dataclass
class _Federated:
    subject: str
    attributes: dict[str, str]
    expires: float


class ExchangeRefused(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(json.dumps(body))
        self.status, self.body = status, body


def _oauth_error(error: str, description: str) -> ExchangeRefused:
    return ExchangeRefused(400, {"error": error, "error_description": description})


def _google_error(status: int, name: str, message: str) -> ExchangeRefused:
    return ExchangeRefused(status, {"error": {"code": status, "message": message, "status": name}})


@dataclass
class LocalWorkloadIdentity:
    provider: Provider
    certs: Callable[[], dict[str, str]]  # the issuer's public keys: key id -> PEM certificate
    key_dir: Path  # the accounts' local keys (local/standin/identity.py)
    clock: Callable[[], float] = time.time
    _federated: dict[str, _Federated] = field(default_factory=dict)
    issued: list[tuple[str, str]] = field(default_factory=list)  # (account, principal), for tests
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: LoopbackServer | None = None
    url: str = ""

    # -- the two calls, without HTTP ------------------------------------------------------
    def exchange(self, form: dict[str, str]) -> dict:
        if form.get("grant_type") != GRANT_TYPE:
            raise _oauth_error("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise _oauth_error("invalid_request", "subject_token_type must name a JWT")
        if form.get("audience") != self.provider.audience:
            raise _oauth_error("invalid_target", INVALID_TARGET)
        claims = self._verified(form.get("subject_token", ""))
        google, attributes = {}, {}
        for key, expression in self.provider.mapping.items():
            value = evaluate(expression, claims)
            if value is None:
                continue  # a claim the token lacks maps to nothing (IAM: "attribute is not set")
            (google if key.startswith("google.") else attributes)[key.split(".", 1)[1]] = str(value)
        subject = google.get("subject", "")
        if not subject or len(subject.encode()) > 127:
            raise _oauth_error("invalid_request", "The mapped google.subject must be set and at most 127 bytes.")
        if evaluate(self.provider.condition, claims, attributes) is not True:
            raise _oauth_error("unauthorized_client", REJECTED)
        token = "local-sts." + secrets.token_urlsafe(24)
        with self._lock:
            self._federated[token] = _Federated(subject, attributes, self.clock() + TOKEN_LIFETIME_S)
        return {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_S}

    def _verified(self, token: str) -> dict:
        try:
            header_claims = jwt.decode(token, verify=False)
        except (ValueError, auth_exceptions.GoogleAuthError):
            raise _oauth_error("invalid_request", "The subject token is not a JWT.") from None
        now = self.clock()
        if float(header_claims.get("exp", 0)) <= now:
            raise _oauth_error("invalid_grant", f"ID Token issued at {header_claims.get('iat')} is stale to sign-in.")
        try:
            claims = jwt.decode(token, certs=self.certs(), audience=self.provider.allowed_audience)
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise _oauth_error("invalid_grant", f"The subject token could not be verified: {exc}") from None
        if claims.get("iss") != self.provider.issuer:
            raise _oauth_error("invalid_grant", f"The issuer {claims.get('iss')!r} does not match the provider's issuer.")
        return claims

    def generate_access_token(self, email: str, authorization: str) -> dict:
        bearer = authorization.split(" ", 1)[1] if authorization.lower().startswith("bearer ") else ""
        with self._lock:
            principal = self._federated.get(bearer)
        if principal is None or principal.expires <= self.clock():
            raise _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if not any(self._is(principal, member) for member in self.provider.bindings.get(email, ())):
            raise _google_error(403, "PERMISSION_DENIED", DENIED)
        from local.standin.identity import mint_key

        key = json.loads(mint_key(self.key_dir, email).read_text())
        signer = crypt.RSASigner.from_string(key["private_key"], key_id=key["private_key_id"])
        now = int(self.clock())
        token = jwt.encode(signer, {"iss": email, "sub": email, "aud": "https://cloud.google.com/",
                                    "iat": now, "exp": now + TOKEN_LIFETIME_S}).decode("ascii")
        with self._lock:
            self.issued.append((email, principal.subject))
        expire = dt.datetime.fromtimestamp(now + TOKEN_LIFETIME_S, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"accessToken": token, "expireTime": expire}

    def _is(self, principal: _Federated, member: str) -> bool:
        base = f"//iam.googleapis.com/{self.provider.pool}/"
        if member.startswith(f"principalSet:{base}attribute."):
            name, _, value = member[len(f"principalSet:{base}attribute."):].partition("/")
            return principal.attributes.get(name) == value
        if member.startswith(f"principal:{base}subject/"):
            return principal.subject == member[len(f"principal:{base}subject/"):]
        return False

    # -- loopback HTTP ----------------------------------------------------------------------
    def credential_config(self, service_account: str, token_file: Path) -> dict:
        """What google-github-actions/auth writes for google-auth, pointed at this endpoint."""
        return {"type": "external_account", "audience": self.provider.audience,
                "subject_token_type": SUBJECT_TOKEN_TYPES[0], "token_url": f"{self.url}/v1/token",
                "service_account_impersonation_url":
                    f"{self.url}/v1/projects/-/serviceAccounts/{service_account}:generateAccessToken",
                "credential_source": {"file": str(token_file)}}

    def start(self) -> "LocalWorkloadIdentity":
        wif = self

        class Handler(JsonHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
                try:
                    if self.path == "/v1/token":
                        answer = wif.exchange(dict(urllib.parse.parse_qsl(body)))
                    elif match := GENERATE.match(self.path):
                        answer = wif.generate_access_token(urllib.parse.unquote(match.group(1)),
                                                           self.headers.get("Authorization", ""))
                    else:
                        raise _google_error(404, "NOT_FOUND", f"{self.path} is not a method of STS or IAM Credentials")
                except ExchangeRefused as refused:
                    return self._answer(refused.status, refused.body)
                self._answer(200, answer)

        self._server = LoopbackServer(Handler, "local-wif")
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
