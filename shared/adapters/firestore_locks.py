"""The environment lock documents in Firestore (``locks/{environment}``), written with an
update-time precondition like the releases; the policy is in ``shared/app/locks.py``."""
from __future__ import annotations

from typing import Any

from shared.app.config import Settings
from shared.app.ports import empty_lock_document
from shared.domain.errors import StaleWrite


class FirestoreLockDocuments:
    def __init__(self, client, settings: Settings):
        self.client = client
        self.collection = client.collection(settings.collection("locks"))

    def read(self, environment: str) -> tuple[dict[str, Any], Any]:
        snapshot = self.collection.document(environment).get()
        if not snapshot.exists:
            return empty_lock_document(), None
        return {**empty_lock_document(), **snapshot.to_dict()}, snapshot.update_time

    def write(self, environment: str, data: dict[str, Any], token: Any) -> None:
        from google.api_core import exceptions as gexc

        doc = self.collection.document(environment)
        try:
            if token is None:
                doc.create(data)
            else:
                doc.update(data, option=self.client.write_option(last_update_time=token))
        except (gexc.AlreadyExists, gexc.FailedPrecondition):
            raise StaleWrite(f"lock {environment} changed since it was read") from None
