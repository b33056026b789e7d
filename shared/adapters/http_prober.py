"""HttpProber over requests: what a check's probe uses to GET a path once.

Its own module, so the probe function's check path imports requests and nothing of the
executors (their API clients and retry machinery load only for polls)."""
from __future__ import annotations

from typing import Any, Mapping

import requests


class RequestsProber:
    """HttpProber over requests: one GET, following redirects, latency as requests measured it."""

    def __init__(self, session: Any = None):
        self.session = session or requests.Session()

    def get(self, url: str, timeout_s: float) -> Mapping[str, Any]:
        try:
            response = self.session.get(url, timeout=timeout_s, allow_redirects=True)
        except requests.RequestException as exc:
            return {"status": None, "latency_ms": None, "error": type(exc).__name__}
        return {"status": response.status_code, "latency_ms": round(response.elapsed.total_seconds() * 1000, 1),
                "error": ""}
