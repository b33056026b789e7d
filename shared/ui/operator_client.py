"""How ``relctl`` reaches the operator function: an ID token, then one POST.

On GCP the token comes from google-auth: ``fetch_id_token`` for a service account
(key file, metadata server), else the ID token of the gcloud user's application
default credentials. On the local stack there is no Google account: the stack's
token issuer (``RELEASE_OPERATOR_TOKEN_URL``) mints one for ``--as`` (default
``RELEASE_OPERATOR_EMAIL``); only the local operator function trusts it.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from shared.app.config import Settings
from shared.domain.errors import PipelineError

TIMEOUT_S = 30


def id_token(settings: Settings, audience: str, as_: str | None = None) -> str:
    if settings.operator_token_url:
        email = as_ or os.environ.get("RELEASE_OPERATOR_EMAIL", "")
        if not email:
            raise PipelineError("the local token issuer needs --as WHO or RELEASE_OPERATOR_EMAIL")
        answer = _post(settings.operator_token_url, "the local token issuer (RELEASE_OPERATOR_TOKEN_URL)",
                       json={"email": email, "audience": audience})
        answer.raise_for_status()
        return answer.json()["id_token"]
    import google.auth
    from google.auth import exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token as google_id_token

    try:
        return google_id_token.fetch_id_token(Request(), audience)
    except exceptions.DefaultCredentialsError:
        credentials, _ = google.auth.default(scopes=["openid", "email"])
        credentials.refresh(Request())
        token = getattr(credentials, "id_token", None)
        if not token:
            raise PipelineError("no ID token from these credentials; run `gcloud auth application-default login`")
        return token


def _post(url: str, what: str, **kwargs: Any):
    """One POST; a server that does not answer is one plain sentence, not the library's retry report."""
    import requests

    try:
        return requests.post(url, timeout=TIMEOUT_S, **kwargs)
    except requests.ConnectionError:
        raise PipelineError(f"{what} does not answer at {url}: is it running? (locally: `make demo "
                            "DEMO_ARGS=--keep` and the export line it prints)") from None
    except requests.Timeout:
        raise PipelineError(f"{what} at {url} did not answer within {TIMEOUT_S}s") from None


def call_operator(settings: Settings, action: str, params: Mapping[str, Any], *, request_id: str | None = None,
                  as_: str | None = None) -> dict[str, Any]:
    """POST the action; the function's answer, or PipelineError with its reason."""
    url = settings.require("operator_url")
    audience = settings.operator_audience or url
    body: dict[str, Any] = {"action": action, "params": dict(params)}
    if request_id:
        body["request_id"] = request_id
    answer = _post(url, "the operator function (RELEASE_OPERATOR_URL)", json=body,
                   headers={"Authorization": f"Bearer {id_token(settings, audience, as_)}"})
    try:
        data = answer.json()
    except ValueError:
        data = {"error": answer.text[:300]}
    if answer.status_code != 200:
        raise PipelineError(f"the operator function refused {action} ({answer.status_code}): "
                            f"{data.get('error', '')}")
    return data
