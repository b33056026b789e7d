"""Cloud Run's IAM check in front of a private function, played on loopback.

A function deployed with ``--no-allow-unauthenticated`` is reached only with a Google-signed ID
token whose audience is the function's URL and whose principal holds ``run.invoker`` on it
(https://cloud.google.com/run/docs/authenticating/service-to-service): a request without a valid
token is refused with 401, one whose principal is not an invoker with 403, before the code runs.
This front does the same for one function: it verifies the token with google-auth against the
local token issuer's certificates (the issuer stands in for Google), maps its ``email`` to the IAM
member (``serviceAccount:`` for service accounts, ``user:`` otherwise), checks it against the
plan's ``roles/run.invoker`` bindings on that function, and only then forwards the request to the
functions-framework process behind it.
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def member_of(email: str) -> str:
    return f"serviceAccount:{email}" if email.endswith(".gserviceaccount.com") else f"user:{email}"


class InvokerFront:
    def __init__(self, function: str, port: int, backend_port: int, invokers: set[str], certs_url: str,
                 issuer: str) -> None:
        self.function = function
        self.invokers = set(invokers)
        self._backend_port = backend_port
        self._certs_url = certs_url
        self._issuer = issuer
        self.url = f"http://127.0.0.1:{port}"
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                front._serve(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name=f"front-{function}").start()

    def refusal(self, authorization: str) -> tuple[int, str] | None:
        """(status, reason) when Cloud Run would refuse the request, None when it may pass."""
        from google.auth import exceptions as auth_exceptions
        from google.auth.transport.requests import Request
        from google.oauth2 import id_token

        if not authorization.lower().startswith("bearer "):
            return 401, "The request was not authenticated: no bearer ID token"
        try:
            claims = id_token.verify_token(authorization.split(" ", 1)[1], Request(), audience=self.url,
                                           certs_url=self._certs_url)
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            return 401, f"The request was not authenticated: {exc}"
        if claims.get("iss") != self._issuer or not claims.get("email"):
            return 401, "The request was not authenticated: unknown issuer or no email"
        member = member_of(claims["email"])
        if member not in self.invokers:
            return 403, f"{member} does not have permission 'run.routes.invoke' on function {self.function}"
        return None

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        refused = self.refusal(request.headers.get("Authorization", ""))
        if refused is not None:
            return _answer(request, refused[0], refused[1])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection("127.0.0.1", self._backend_port, timeout=600)
        try:
            conn.request(request.command, request.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except OSError as exc:
            return _answer(request, 503, f"function {self.function} is not answering: {exc}")
        finally:
            conn.close()
        request.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _answer(request: BaseHTTPRequestHandler, status: int, text: str) -> None:
    payload = (text + "\n").encode()
    request.send_response(status)
    request.send_header("Content-Type", "text/plain; charset=utf-8")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(payload)
