"""GitHub's compare API over requests: what a release brings since the commit prod runs.

``GET {api}/repos/{owner}/{repo}/compare/{base}...{head}`` (docs.github.com/rest/commits/commits
#compare-two-commits) answers ``status``, ``ahead_by``, ``total_commits``, ``html_url`` and
``commits`` oldest first (each ``sha``, ``commit.message``, ``commit.author.name``; at most 250).
Every failure is a ``CompareUnavailable`` whose message names the status or the kind of
failure only: the token never appears in it, nor in a log line.
"""
from __future__ import annotations

from typing import Any, Mapping

import requests

from shared.domain.errors import PipelineError

DEFAULT_API = "https://api.github.com"
TIMEOUT_S = 5.0  # one call per approval request; the fallback is the push's own commits


class CompareUnavailable(PipelineError):
    """The compare could not be had; ``str()`` is short and safe to show ("404", "timeout")."""


class GitHubCompare:
    def __init__(self, token: str, api_url: str = DEFAULT_API, timeout_s: float = TIMEOUT_S, session: Any = None):
        self._token = token
        self.api_url = (api_url or DEFAULT_API).rstrip("/")
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def compare(self, repo: str, base: str, head: str) -> Mapping[str, Any]:
        """The decoded comparison of ``base...head`` in ``repo`` ("owner/name")."""
        url = f"{self.api_url}/repos/{repo}/compare/{base}...{head}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        try:
            response = self.session.get(url, headers=headers, timeout=self.timeout_s, allow_redirects=False)
        except requests.Timeout:
            raise CompareUnavailable("timeout") from None
        except requests.RequestException as exc:
            raise CompareUnavailable(type(exc).__name__) from None
        if response.status_code != 200:
            raise CompareUnavailable(str(response.status_code))
        try:
            body = response.json()
        except ValueError:
            raise CompareUnavailable("malformed response (not JSON)") from None
        if not isinstance(body, dict) or not isinstance(body.get("commits"), list):
            raise CompareUnavailable("malformed response (no commits)")
        return body
