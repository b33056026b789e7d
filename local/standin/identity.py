"""Service account keys minted on this machine, and the check of the tokens made from them.

A key file has the format of ``gcloud iam service-accounts keys create`` output, so
google-auth loads it through GOOGLE_APPLICATION_CREDENTIALS exactly as on any machine;
the client libraries then send a self-signed JWT (iss = sub = the account, signed with the
key; https://google.aip.dev/auth/4111) in the ``authorization`` metadata of every call.
The stand-in, playing IAM, knows the public half of every key in its key folder and
answers UNAUTHENTICATED to a call without a valid token, as Google does.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

import grpc
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

from local.standin.common import ApiError


def default_compute_account(project_number: str) -> str:
    """The account a build or revision runs as when none is named (the project's default)."""
    return f"{project_number}-compute@developer.gserviceaccount.com"


def mint_key(key_dir: Path, email: str) -> Path:
    """Create (once) a key for ``email`` in ``key_dir``; returns the key file's path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_dir.mkdir(parents=True, exist_ok=True)
    path = key_dir / f"{email}.json"
    if path.exists():
        return path
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    project = email.split("@", 1)[1].split(".", 1)[0]
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": uuid.uuid4().hex,
        "private_key": pem, "client_email": email, "client_id": str(uuid.uuid4().int)[:21],
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)  # first one wins: a key already handed out is never replaced
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path


class KeyRing:
    """The public keys of the keys in ``key_dir``, by key id (read again when an id is new)."""

    def __init__(self, key_dir: Path) -> None:
        self.key_dir = key_dir
        self._certs: dict[str, tuple[str, str]] = {}  # key id -> (public PEM, account)
        self._lock = threading.Lock()

    def _reload(self) -> None:
        from cryptography.hazmat.primitives import serialization

        for path in sorted(self.key_dir.glob("*.json")):
            data = json.loads(path.read_text())
            if data.get("private_key_id") in self._certs:
                continue
            private = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
            public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            self._certs[data["private_key_id"]] = (public, data["client_email"])

    def caller(self, metadata: dict[str, str]) -> str:
        """The account whose valid token the call carries; UNAUTHENTICATED otherwise."""
        header = metadata.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED,
                           "Request is missing required authentication credential. Expected OAuth 2 access token, "
                           "login cookie or other valid authentication credential.")
        token = header.split(" ", 1)[1]
        try:
            kid = jwt.decode_header(token).get("kid", "")
        except (ValueError, auth_exceptions.GoogleAuthError):
            kid = ""
        with self._lock:
            if kid not in self._certs:
                self._reload()
            cert = self._certs.get(kid)
        if cert is None:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials.")
        try:
            claims = jwt.decode(token, certs={kid: cert[0]}, verify=True)
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED,
                           f"Request had invalid authentication credentials: {exc}") from None
        if claims.get("sub") != cert[1] or claims.get("iss") != cert[1]:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials.")
        return cert[1]
