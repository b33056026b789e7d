"""GitHub deployments and commit statuses over requests, authenticated as a GitHub App.

The App flow (docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app):
a JWT signed RS256 with the App's private key (``iat`` 60 s in the past against clock drift, ``exp``
at most 10 minutes ahead, ``iss`` the App id; made with PyJWT, not by hand) buys an installation
access token (``POST /app/installations/{id}/access_tokens``) for the repository's installation
(``GET /repos/{owner}/{repo}/installation``). The token lasts an hour; it is reused until
TOKEN_MARGIN_S before it expires, so one token serves a release.

Failures are ``GitHubRetry`` (5xx, timeouts, rate limits: carries how long to wait, from
``Retry-After`` or ``X-RateLimit-Reset``, docs.github.com/en/rest/using-the-rest-api/
rate-limits-for-the-rest-api#exceeding-the-rate-limit), ``GitHubNotInstalled`` (the App is not on the
repository: report nothing) or ``GitHubRefused`` (any other 4xx). Messages name the call and the
status only: no token, no key.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any, Callable, Mapping

import jwt
import requests

from shared.domain.errors import ConfigError, GitHubNotInstalled, GitHubRefused, GitHubRetry

DEFAULT_API = "https://api.github.com"
TIMEOUT_S = 5.0
JWT_BACKDATE_S = 60
JWT_LIFETIME_S = 540  # GitHub refuses an exp more than 10 minutes ahead; 9 leaves room for drift
TOKEN_MARGIN_S = 300  # a token is renewed this long before it expires
DEFAULT_RETRY_S = 60.0  # a secondary rate limit without headers: "wait at least one minute"


class GitHubApp:
    def __init__(self, app_id: str, private_key: str, api_url: str = DEFAULT_API, timeout_s: float = TIMEOUT_S,
                 session: Any = None, clock: Callable[[], float] = time.time):
        if not app_id or not private_key:
            raise ConfigError("a GitHub App needs its id and its private key")
        self.app_id = str(app_id)
        self._key = private_key
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()
        self.clock = clock
        self._lock = threading.RLock()  # _token calls _call, which may clear the tokens
        self._installations: dict[str, int] = {}  # owner -> installation id
        self._tokens: dict[int, tuple[str, float]] = {}  # installation id -> (token, expires at)
        self.tokens_minted = 0

    # -- the App flow -----------------------------------------------------------------------------
    def app_jwt(self) -> str:
        now = int(self.clock())
        claims = {"iat": now - JWT_BACKDATE_S, "exp": now + JWT_LIFETIME_S, "iss": self.app_id}
        try:
            return jwt.encode(claims, self._key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError):
            raise ConfigError("the GitHub App's private key is not a usable RSA key (PEM)") from None

    def _installation(self, repo: str) -> int:
        owner = repo.split("/")[0].lower()
        if owner not in self._installations:
            body = self._call("GET", f"/repos/{repo}/installation", None, auth=f"Bearer {self.app_jwt()}",
                              what=f"the App's installation on {repo}")
            self._installations[owner] = int(body["id"])
        return self._installations[owner]

    def _token(self, repo: str) -> str:
        with self._lock:
            installation = self._installation(repo)
            token, expires = self._tokens.get(installation, ("", 0.0))
            if token and expires - TOKEN_MARGIN_S > self.clock():
                return token
            body = self._call("POST", f"/app/installations/{installation}/access_tokens", None,
                              auth=f"Bearer {self.app_jwt()}", what="an installation token")
            self.tokens_minted += 1
            token, expires = str(body["token"]), _epoch(body.get("expires_at")) or self.clock() + 3600
            self._tokens[installation] = (token, expires)
            return token

    # -- the reporting calls (shared/app/ports.py: GitHubDeployments) -----------------------------
    def find_deployment(self, repo: str, sha: str, environment: str, release_id: str) -> int | None:
        """The deployment an earlier, interrupted try created for this release, if any."""
        found = self._repo_call("GET", repo, f"/repos/{repo}/deployments?sha={sha}&environment={environment}"
                                f"&task=deploy&per_page=100", None, "listing deployments")
        for deployment in found if isinstance(found, list) else []:
            payload = deployment.get("payload")
            if isinstance(payload, Mapping) and payload.get("release_id") == release_id:
                return int(deployment["id"])
        return None

    def create_deployment(self, repo: str, body: Mapping[str, Any]) -> int:
        answer = self._repo_call("POST", repo, f"/repos/{repo}/deployments", body, "creating a deployment")
        if "id" not in answer:  # 202: "auto-merge happened" instead; auto_merge is off, so not expected
            raise GitHubRefused(f"creating a deployment: {answer.get('message', 'no deployment made')}")
        return int(answer["id"])

    def create_deployment_status(self, repo: str, deployment_id: int, body: Mapping[str, Any]) -> None:
        self._repo_call("POST", repo, f"/repos/{repo}/deployments/{deployment_id}/statuses", body,
                        "creating a deployment status")

    def create_commit_status(self, repo: str, sha: str, body: Mapping[str, Any]) -> None:
        self._repo_call("POST", repo, f"/repos/{repo}/statuses/{sha}", body, "creating a commit status")

    def _repo_call(self, method: str, repo: str, path: str, body: Any, what: str) -> Any:
        return self._call(method, path, body, auth=f"token {self._token(repo)}", what=what)

    def _call(self, method: str, path: str, body: Any, *, auth: str, what: str) -> Any:
        headers = {"Authorization": auth, "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        try:
            response = self.session.request(method, self.api_url + path, json=body, headers=headers,
                                            timeout=self.timeout_s, allow_redirects=False)
        except requests.Timeout:
            raise GitHubRetry(f"{what}: timeout", 0.0) from None
        except requests.RequestException as exc:
            raise GitHubRetry(f"{what}: {type(exc).__name__}", 0.0) from None
        status = response.status_code
        if status in (200, 201, 202):
            try:
                return response.json()
            except ValueError:
                raise GitHubRetry(f"{what}: {status} with a body that is not JSON", 0.0) from None
        message = _message(response)
        if status >= 500:
            raise GitHubRetry(f"{what}: {status}", _retry_after(response, self.clock()) or 0.0)
        if status in (403, 429) and (response.headers.get("Retry-After")
                                     or response.headers.get("X-RateLimit-Remaining") == "0"):
            raise GitHubRetry(f"{what}: {status} rate limited", _retry_after(response, self.clock()) or DEFAULT_RETRY_S)
        if status == 404 and path.endswith("/installation"):
            raise GitHubNotInstalled(f"{what}: the App is not installed there")
        if status == 401:
            with self._lock:
                self._tokens.clear()  # a revoked token: the next try mints a new one
        raise GitHubRefused(f"{what}: {status} {message}".strip())


def _message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""


def _retry_after(response: Any, now: float) -> float | None:
    """Seconds to wait: ``Retry-After`` (seconds) first, else ``X-RateLimit-Reset`` (epoch) - now."""
    raw = response.headers.get("Retry-After")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            pass
    reset = response.headers.get("X-RateLimit-Reset")
    if reset and response.headers.get("X-RateLimit-Remaining") == "0":
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            pass
    return None


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
