"""The per-application records in Firestore (``apps/{app}``), written with an update-time
precondition like the releases; what they hold is described in ``shared/app/locks.py``."""
from __future__ import annotations

from typing import Any

from shared.app.config import Settings
from typing import Callable

from shared.app.ports import empty_app_record
from shared.domain.errors import StaleWrite
from shared.app.service_locks import empty_service_record


def app_document_id(app: str) -> str:
    """Firestore ids may not contain '/' nor be '.', '..' or '__x__'."""
    cleaned = app.replace("/", "_")[:500]
    return cleaned if cleaned.strip(".") and not cleaned.startswith("__") else f"app-{cleaned}"


class FirestoreAppRecords:
    def __init__(self, client, settings: Settings, collection: str = "apps",
                 empty: Callable[[], dict[str, Any]] = empty_app_record):
        """``collection="service_locks"`` with ``empty=empty_service_record`` holds the locks of
        Cloud Run services shared by applications (shared/app/service_locks.py), same contract."""
        self.client = client
        self.collection = client.collection(settings.collection(collection))
        self._empty = empty

    def read(self, app: str) -> tuple[dict[str, Any], Any]:
        snapshot = self.collection.document(app_document_id(app)).get()
        if not snapshot.exists:
            return self._empty(), None
        return {**self._empty(), **snapshot.to_dict()}, snapshot.update_time

    def write(self, app: str, data: dict[str, Any], token: Any) -> None:
        from google.api_core import exceptions as gexc

        doc = self.collection.document(app_document_id(app))
        try:
            if token is None:
                doc.create(data)
            else:
                doc.update(data, option=self.client.write_option(last_update_time=token))
        except (gexc.AlreadyExists, gexc.FailedPrecondition):
            raise StaleWrite(f"application record {app} changed since it was read") from None


def service_lock_records(client, settings: Settings) -> FirestoreAppRecords:
    """``service_locks/{service}``: the locks of Cloud Run services (shared/app/service_locks.py)."""
    return FirestoreAppRecords(client, settings, "service_locks", empty_service_record)
