"""HttpProber over requests: what a check's probe uses to GET a path once.

Its own module, so the probe function's check path imports requests and nothing of the
executors (their API clients and retry machinery load only for polls)."""
from __future__ import annotations

from typing import Any, Mapping

import requests

from shared.domain.errors import PipelineError


class RequestsProber:
    """HttpProber over requests: one GET, following redirects, latency as requests measured it.
    With an ``audience`` (a private service) the GET carries a Google ID token for it."""

    def __init__(self, session: Any = None, id_tokens: Any = None):
        self.session = session or requests.Session()
        self.id_tokens = id_tokens  # an IdTokenSource; None: no check may name an audience

    def get(self, url: str, timeout_s: float, audience: str = "") -> Mapping[str, Any]:
        headers = {}
        if audience:
            if self.id_tokens is None:
                return {"status": None, "latency_ms": None, "error": "no ID token source for a private service"}
            try:
                headers["Authorization"] = f"Bearer {self.id_tokens.token(audience)}"
            except PipelineError as exc:  # the next probe tries again; the reason shows in the check
                return {"status": None, "latency_ms": None, "error": str(exc)}
        try:
            response = self.session.get(url, timeout=timeout_s, allow_redirects=True, headers=headers)
        except requests.RequestException as exc:
            return {"status": None, "latency_ms": None, "error": type(exc).__name__}
        return {"status": response.status_code, "latency_ms": round(response.elapsed.total_seconds() * 1000, 1),
                "error": ""}
