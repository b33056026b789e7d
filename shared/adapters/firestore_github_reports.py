"""What was reported to GitHub, per release, in Firestore: ``github_reports/{release_id}``.

The lease is taken by a read and a write conditional on what was read (its update time), so two
handlers of the same release never report at once; one that finds the lease taken marks the record
due (``retry_at`` now), so the sweeper's next tick syncs what the holder may have read too early.
Not transactions: the emulator and the server client libraries lock a transaction's reads, and
handlers of one release syncing at once made them fail ("Failed to commit transaction in 5
attempts", a ValueError) and lose the holder's save, which sent its reports to GitHub again.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from google.api_core import exceptions as gexc

from shared.adapters.firestore_store import doc_id, field_paths
from shared.app.config import Settings
from shared.app.github_reporting import empty_record
from shared.domain.errors import TransientError

RETENTION_DAYS = 90  # as long as a finished release is kept
CONFLICT_RETRIES = 10  # rereads of a record another handler wrote meanwhile


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
        ref = self.collection.document(doc_id(release_id))
        for _ in range(CONFLICT_RETRIES):
            snapshot = ref.get()
            record = {**empty_record(), **(snapshot.to_dict() or {})}
            record.pop("expire_at", None)
            record.pop("resync", None)
            if (record.get("lease_until") or 0) > now:
                ref.set({"retry_at": now, "resync": True}, merge=True)
                return None
            taken = {**record, "release_id": release_id, "lease_until": now + lease_s, "resync": False}
            if self._write(ref, snapshot, taken):
                record.pop("lease_until", None)
                return record
            # Another handler wrote it since it was read: look again (it may hold the lease now).
        ref.set({"retry_at": now, "resync": True}, merge=True)  # still contended: leave it due
        return None

    def save(self, release_id: str, record: dict[str, Any]) -> None:
        """Keeps a resync asked for by a handler that found the lease taken: the record stays due."""
        ref = self.collection.document(doc_id(release_id))
        # a timestamp, the only type a TTL policy reads (deploy/firestore.py)
        expire_at = datetime.now(timezone.utc) + timedelta(days=RETENTION_DAYS)
        for _ in range(CONFLICT_RETRIES):
            snapshot = ref.get()
            stored = snapshot.to_dict() or {}
            retry_at = record.get("retry_at")
            if stored.get("resync"):
                retry_at = min(retry_at, stored["retry_at"]) if retry_at is not None else stored["retry_at"]
            if self._write(ref, snapshot, {**record, "release_id": release_id, "lease_until": 0, "resync": False,
                                           "retry_at": retry_at, "expire_at": expire_at}):
                return
        raise TransientError(f"GitHub report record of {release_id} kept changing while it was saved",
                             release_id=release_id)

    def _write(self, ref: Any, snapshot: Any, record: dict[str, Any]) -> bool:
        """Write the whole record if the document is still as ``snapshot`` read it; False if not."""
        try:
            if snapshot.exists:
                # ``update`` takes a precondition (``set`` does not). It leaves a field the record
                # does not name as it was: only ``expire_at`` while claiming, rewritten by the save.
                ref.update(field_paths({(key,): value for key, value in record.items()}),
                           option=self.client.write_option(last_update_time=snapshot.update_time))
            else:
                ref.create(record)
            return True
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.NotFound):
            return False

    def due(self, now: float, limit: int = 20) -> list[str]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.collection.where(filter=FieldFilter("retry_at", "<=", now)).limit(limit)
        return [s.to_dict()["release_id"] for s in query.stream()]
