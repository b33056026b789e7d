"""The per-application records in Firestore (``apps/{app}``), written with an update-time
precondition like the releases; what they hold is shared/domain/app_record.py, the stored
document shared/adapters/app_record_doc.py."""
from __future__ import annotations

from typing import Any, Callable, Generic, Mapping, TypeVar

from shared.adapters.app_record_doc import decode_app_record, encode_app_record
from shared.app.config import Settings
from shared.app.service_locks import service_record
from shared.domain.app_record import AppRecord
from shared.domain.errors import StaleWrite

R = TypeVar("R")


def app_document_id(app: str) -> str:
    """Firestore ids may not contain '/' nor be '.', '..' or '__x__'."""
    cleaned = app.replace("/", "_")[:500]
    return cleaned if cleaned.strip(".") and not cleaned.startswith("__") else f"app-{cleaned}"


class FirestoreRecords(Generic[R]):
    """One document per key in ``collection``, read through ``decode`` and written through
    ``encode`` with an update-time precondition (create-only when it was never written)."""

    def __init__(self, client, settings: Settings, collection: str,
                 decode: Callable[[Mapping[str, Any] | None], R], encode: Callable[[R], dict[str, Any]]):
        self.client = client
        self.collection = client.collection(settings.collection(collection))
        self._decode, self._encode = decode, encode

    def read(self, key: str) -> tuple[R, Any]:
        snapshot = self.collection.document(app_document_id(key)).get()
        if not snapshot.exists:
            return self._decode(None), None
        return self._decode(snapshot.to_dict()), snapshot.update_time

    def write(self, key: str, record: R, token: Any) -> None:
        from google.api_core import exceptions as gexc

        doc = self.collection.document(app_document_id(key))
        data = self._encode(record)
        try:
            if token is None:
                doc.create(data)
            else:
                doc.update(data, option=self.client.write_option(last_update_time=token))
        except (gexc.AlreadyExists, gexc.FailedPrecondition):
            raise StaleWrite(f"record {key} in {self.collection.id} changed since it was read") from None


class FirestoreAppRecords(FirestoreRecords[AppRecord]):
    """``apps/{app}``: the AppRecords port."""

    def __init__(self, client, settings: Settings):
        super().__init__(client, settings, "apps", decode_app_record, encode_app_record)


def service_lock_records(client, settings: Settings) -> FirestoreRecords[dict[str, Any]]:
    """``service_locks/{service}``: the locks of Cloud Run services (shared/app/service_locks.py)."""
    return FirestoreRecords(client, settings, "service_locks", service_record, dict)
