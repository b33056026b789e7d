"""What was reported to GitHub, per release, in Firestore: ``github_reports/{release_id}``.

The lease is taken in a transaction (read, check ``lease_until``, write), so two handlers of the same
release never report at once; one that finds the lease taken marks the record due (``retry_at`` now),
so the sweeper's next tick syncs what the holder may have read too early.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from shared.adapters.firestore_store import doc_id
from shared.app.config import Settings
from shared.app.github_reporting import empty_record

RETENTION_DAYS = 90  # as long as a finished release is kept


class FirestoreGitHubReports:
    def __init__(self, client: Any, settings: Settings):
        self.client = client
        self.collection = client.collection(settings.collection("github_reports"))

    def get(self, release_id: str) -> dict[str, Any] | None:
        snapshot = self.collection.document(doc_id(release_id)).get()
        if not snapshot.exists:
            return None
        record = {**empty_record(), **snapshot.to_dict()}
        record.pop("expire_at", None)
        record.pop("resync", None)
        return record

    def claim(self, release_id: str, now: float, lease_s: float) -> dict[str, Any] | None:
        from google.cloud import firestore

        ref = self.collection.document(doc_id(release_id))

        @firestore.transactional
        def take(transaction):
            snapshot = ref.get(transaction=transaction)
            record = {**empty_record(), **(snapshot.to_dict() or {})}
            record.pop("expire_at", None)
            record.pop("resync", None)
            if (record.get("lease_until") or 0) > now:
                transaction.set(ref, {"retry_at": now, "resync": True}, merge=True)
                return None
            transaction.set(ref, {**record, "release_id": release_id, "lease_until": now + lease_s})
            return record

        record = take(self.client.transaction())
        if record is not None:
            record.pop("lease_until", None)
        return record

    def save(self, release_id: str, record: dict[str, Any]) -> None:
        """Keeps a resync asked for by a handler that found the lease taken: the record stays due."""
        from google.cloud import firestore

        ref = self.collection.document(doc_id(release_id))
        # a timestamp, the only type a TTL policy reads (deploy/firestore.py)
        expire_at = datetime.now(timezone.utc) + timedelta(days=RETENTION_DAYS)

        @firestore.transactional
        def put(transaction):
            stored = ref.get(transaction=transaction).to_dict() or {}
            retry_at = record.get("retry_at")
            if stored.get("resync"):
                retry_at = min(retry_at, stored["retry_at"]) if retry_at is not None else stored["retry_at"]
            transaction.set(ref, {**record, "release_id": release_id, "lease_until": 0, "resync": False,
                                  "retry_at": retry_at, "expire_at": expire_at})

        put(self.client.transaction())

    def due(self, now: float, limit: int = 20) -> list[str]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.collection.where(filter=FieldFilter("retry_at", "<=", now)).limit(limit)
        return [s.to_dict()["release_id"] for s in query.stream()]
