"""Cloud Run's invoker check in front of a private service, as the stand-in's routers apply it.

A service that requires authentication admits a request only with a Google-signed ID token
whose audience is the service's URL (https://cloud.google.com/run/docs/authenticating/service-to-service:
"the aud claim set to the URL of the receiving service") from a principal holding roles/run.invoker
on the service (https://cloud.google.com/run/docs/securing/managing-access). Cloud Run refuses
before the container sees the request (https://cloud.google.com/run/docs/troubleshooting):
401 for a token it cannot accept, 403 "Your client does not have permission to get URL ... from
this server" without one, or for a caller without the role. The signing keys are the local token
issuer's (local/token_issuer.py), which plays Google's here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping

from google.auth import exceptions as auth_exceptions
from google.auth import jwt


@dataclass(frozen=True)
class _Private:
    invokers: frozenset[str]  # e-mail addresses of the accounts holding roles/run.invoker
    certs: Callable[[], Mapping[str, str]]  # key id -> PEM certificate of the ID-token issuer


class InvokerCheck:
    def __init__(self) -> None:
        self._private: dict[str, _Private] = {}
        self._lock = threading.Lock()

    def make_private(self, service_id: str, invokers: tuple[str, ...], certs: Callable[[], Mapping[str, str]]) -> None:
        with self._lock:
            self._private[service_id] = _Private(frozenset(invokers), certs)

    def grant(self, service_id: str, account: str) -> None:
        with self._lock:
            private = self._private[service_id]
            self._private[service_id] = _Private(private.invokers | {account}, private.certs)

    def revoke(self, service_id: str, account: str) -> None:
        with self._lock:
            private = self._private[service_id]
            self._private[service_id] = _Private(private.invokers - {account}, private.certs)

    def refuse(self, service_id: str, headers: Mapping[str, str], path: str,
               audiences: list[str]) -> tuple[int, str] | None:
        """None to serve the request; else (status, body) as Cloud Run answers."""
        with self._lock:
            private = self._private.get(service_id)
        if private is None:
            return None
        forbidden = (403, f"Error: Forbidden\nYour client does not have permission to get URL {path} from this server.")
        header = headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            return forbidden
        try:
            claims = jwt.decode(header.split(" ", 1)[1], certs=dict(private.certs()), audience=audiences)
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            return 401, f"Error: Unauthorized\nThe request was not authorized to invoke this service: {exc}"
        if str(claims.get("email", "")).lower() not in private.invokers:
            return forbidden
        return None
