"""A loopback stand-in for GitHub's compare endpoint, served over real HTTP for the adapter.

GET /repos/{owner}/{repo}/compare/{base}...{head} as documented at
https://docs.github.com/en/rest/commits/commits#compare-two-commits: 200 with ``status``,
``ahead_by``, ``total_commits``, ``html_url`` and ``commits`` oldest first; 404 for a
repository or commit it does not know. A missing or wrong bearer token is 401 "Bad
credentials" (https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api).
``mode`` forces an answer for the failure tests: "garbage" (200, not JSON) or "slow".
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/repos/(?P<repo>[^/]+/[^/]+)/compare/(?P<base>[^./]+)\.\.\.(?P<head>[^./]+)$")


class CompareServer:
    def __init__(self, token: str, repo: str, history: list[tuple[str, str, str]]):
        """``history``: the repository's commits oldest first, as (sha, message, author name)."""
        self.token, self.repo, self.history = token, repo, history
        self.mode = ""
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append({"path": self.path, "headers": dict(self.headers)})
                status, body = server.answer(self.path, self.headers.get("Authorization", ""))
                if server.mode == "slow":
                    time.sleep(1.0)
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.end_headers()
                self.wfile.write(body if isinstance(body, bytes) else json.dumps(body).encode())

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, authorization: str) -> tuple[int, object]:
        if authorization != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        if self.mode == "garbage":
            return 200, b"<html>not json"
        match = PATH.match(path)
        shas = [sha for sha, _, _ in self.history]
        if not match or match["repo"] != self.repo or match["base"] not in shas or match["head"] not in shas:
            return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        start, end = shas.index(match["base"]), shas.index(match["head"])
        between = self.history[start + 1:end + 1]
        return 200, {
            "url": f"{self.url}{path}", "status": "ahead" if between else "identical",
            "html_url": f"https://github.com/{self.repo}/compare/{match['base']}...{match['head']}",
            "ahead_by": len(between), "behind_by": 0, "total_commits": len(between),
            "commits": [{"sha": sha, "commit": {"message": message, "author": {"name": author, "email": "x@example.com"}}}
                        for sha, message, author in between[-250:]],  # the API lists at most 250
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
