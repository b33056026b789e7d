"""A loopback stand-in for the GitHub REST calls of the App flow and of release reporting.

Every request is checked against GitHub's own OpenAPI description (``openapi-subset.json``: the used
paths of ``@octokit/openapi`` 23.0.2's ``api.github.com.deref.json``, MIT, see LICENSE) with
openapi-schema-validator: an unknown path or method is 404, a body the schema refuses is 422 with
GitHub's "Invalid request" shape. Rules the description states only in prose, each as its docs say:
- a deployment status description is at most 140 characters ("The maximum description length is 140
  characters", docs.github.com/en/rest/deployments/statuses#create-a-deployment-status): 422;
- the App's JWT: RS256 signed with the App's key, ``exp`` no more than 10 minutes ahead, ``iat`` not
  in the future (docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/
  generating-a-json-web-token-jwt-for-a-github-app): otherwise 401 "A JSON web token could not be
  decoded" / "'Expiration time' claim ('exp') is too far in the future";
- an installation token is for the installation's repositories only; another repository is 404
  (docs.github.com/en/rest/authentication/authenticating-to-the-rest-api): unknown repository or
  installation are 404 "Not Found".
``fail_next(statuses)`` makes the next requests answer the given statuses (502, or 403 with
``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset``, as docs.github.com/en/rest/using-the-rest-api/
rate-limits-for-the-rest-api describes).
"""
from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from openapi_schema_validator import OAS30Validator

DESCRIPTION = json.loads((Path(__file__).parent / "openapi-subset.json").read_text())
MAX_STATUS_DESCRIPTION = 140
MAX_JWT_AHEAD_S = 600
TOKEN_LIFETIME_S = 3600


def _routes() -> list[tuple[re.Pattern, str, str]]:
    routes = []
    for path, methods in DESCRIPTION["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
        routes.extend((pattern, method.upper(), path) for method in methods)
    return routes


ROUTES = _routes()


class GitHubStandin:
    def __init__(self, app_id: str, public_key_pem: str, repositories: dict[str, int], clock=time.time):
        """``repositories``: "owner/name" -> the App's installation id on it (a repository not
        listed has no installation)."""
        self.app_id, self.public_key, self.clock = str(app_id), public_key_pem, clock
        self.repositories = {k.lower(): v for k, v in repositories.items()}
        self.lock = threading.Lock()
        self.ids = itertools.count(1000)
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation, expires)
        self.deployments: dict[str, list[dict]] = {}  # repo -> deployments
        self.commit_statuses: dict[str, list[dict]] = {}  # repo -> statuses, oldest first
        self.requests: list[tuple[str, str, int]] = []  # (method, path, answer)
        self.token_requests = 0
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- the server --------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = standin.answer(self.command, self.path, dict(self.headers), raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self._failures.extend(statuses)

    # -- reading back --------------------------------------------------------------------------------
    def deployment_states(self, repo: str) -> dict[str, list[str]]:
        """environment -> the states of its deployment's statuses, oldest first (one deployment each)."""
        return {d["environment"]: [s["state"] for s in d["statuses"]] for d in self.deployments.get(repo.lower(), [])}

    # -- answering -----------------------------------------------------------------------------------
    def answer(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict]:
        url = urlsplit(raw_path)
        with self.lock:
            status, body, extra = self._answer(method, url.path, parse_qs(url.query), headers, raw)
            self.requests.append((method, url.path, status))
        return status, body, extra

    def _answer(self, method, path, query, headers, raw):
        if self._failures:
            return self._forced(self._failures.pop(0))
        route = next(((m, p) for pattern, meth, p in ROUTES if meth == method and (m := pattern.match(path))), None)
        if route is None:
            return _error(404, "Not Found")
        match, template = route
        operation = DESCRIPTION["paths"][template][method.lower()]
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "Problems parsing JSON")
        problem = _invalid(operation, body)
        if problem:
            return _error(422, f"Invalid request.\n\n{problem}")
        params = match.groupdict()
        auth = headers.get("Authorization", "")
        if template.startswith("/app/") or template.endswith("/installation"):
            refused = self._check_jwt(auth)
            if refused:
                return _error(401, refused)
            if template.endswith("/installation"):
                repo = f"{params['owner']}/{params['repo']}".lower()
                if repo not in self.repositories:
                    return _error(404, "Not Found")
                return 200, {"id": self.repositories[repo], "app_id": int(self.app_id)}, {}
            installation = int(params["installation_id"]) if params["installation_id"].isdigit() else -1
            if installation not in self.repositories.values():
                return _error(404, "Not Found")
            self.token_requests += 1
            token = "ghs_" + secrets.token_urlsafe(27)
            expires = self.clock() + TOKEN_LIFETIME_S
            self.tokens[token] = (installation, expires)
            return 201, {"token": token, "expires_at": _iso(expires)}, {}
        repo = f"{params['owner']}/{params['repo']}".lower()
        held = self.tokens.get(auth.removeprefix("token ").removeprefix("Bearer ").strip())
        if held is None or held[1] <= self.clock():
            return _error(401, "Bad credentials")
        if self.repositories.get(repo) != held[0]:
            return _error(404, "Not Found")
        return self._repo(method, template, params, query, body or {}, repo)

    def _repo(self, method, template, params, query, body, repo):
        deployments = self.deployments.setdefault(repo, [])
        if template == "/repos/{owner}/{repo}/deployments":
            if method == "GET":
                found = [d for d in reversed(deployments)
                         if all(d.get(k) == query[k][0] for k in ("sha", "environment", "task") if k in query)]
                return 200, [_public(d) for d in found], {}
            deployment = {"id": next(self.ids), "sha": body["ref"], "ref": body["ref"], "task": body.get("task", "deploy"),
                          "environment": body.get("environment", "production"), "payload": body.get("payload", {}),
                          "description": body.get("description"), "created_at": _iso(self.clock()), "statuses": []}
            deployments.append(deployment)
            return 201, _public(deployment), {}
        if template.endswith("/statuses") and "deployment_id" in params:
            deployment = next((d for d in deployments if str(d["id"]) == params["deployment_id"]), None)
            if deployment is None:
                return _error(404, "Not Found")
            if method == "GET":
                return 200, list(reversed(deployment["statuses"])), {}
            if len(body.get("description") or "") > MAX_STATUS_DESCRIPTION:
                return _error(422, "Validation Failed: description is too long (maximum is 140 characters)")
            status = {"id": next(self.ids), "state": body["state"], "description": body.get("description", ""),
                      "log_url": body.get("log_url", ""), "environment_url": body.get("environment_url", ""),
                      "created_at": _iso(self.clock())}
            deployment["statuses"].append(status)
            return 201, status, {}
        if template == "/repos/{owner}/{repo}/statuses/{sha}":
            status = {"id": next(self.ids), "sha": params["sha"], "state": body["state"],
                      "description": body.get("description"), "context": body.get("context", "default"),
                      "target_url": body.get("target_url"), "created_at": _iso(self.clock())}
            self.commit_statuses.setdefault(repo, []).append(status)
            return 201, status, {}
        if template == "/repos/{owner}/{repo}/commits/{ref}/statuses":
            return 200, [s for s in reversed(self.commit_statuses.get(repo, [])) if s["sha"] == params["ref"]], {}
        return _error(404, "Not Found")

    def _check_jwt(self, auth: str) -> str:
        token = auth.removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(token, self.public_key, algorithms=["RS256"], options={"require": ["iat", "exp", "iss"]},
                                leeway=0)
        except jwt.ExpiredSignatureError:
            return "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires"
        except jwt.PyJWTError:
            return "A JSON web token could not be decoded"
        if str(claims["iss"]) != self.app_id:
            return "A JSON web token could not be decoded"
        if claims["exp"] - self.clock() > MAX_JWT_AHEAD_S:
            return "'Expiration time' claim ('exp') is too far in the future"
        if claims["iat"] > self.clock() + 1:
            return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
        return ""

    def _forced(self, status: int):
        if status == 403:  # the primary rate limit, as documented
            reset = int(self.clock()) + 1
            return 403, {"message": "API rate limit exceeded for installation."}, {
                "X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Used": "5000",
                "X-RateLimit-Reset": str(reset)}
        if status == 429:
            return 429, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "1"}
        return status, {"message": "Server Error"}, {}


def _invalid(operation: dict, body: Any) -> str:
    """What the description's request schema refuses in ``body``; "" when it passes."""
    request = operation.get("requestBody")
    if request is None:
        return ""
    if body is None:
        return "a request body is required" if request.get("required") else ""
    schema = request["content"]["application/json"]["schema"]
    errors = sorted(OAS30Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    return "; ".join(f"{'/'.join(map(str, e.path)) or 'body'}: {e.message}" for e in errors[:3])


def _error(status: int, message: str):
    return status, {"message": message, "documentation_url": "https://docs.github.com/rest", "status": str(status)}, {}


def _public(deployment: dict) -> dict:
    return {k: v for k, v in deployment.items() if k != "statuses"}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
