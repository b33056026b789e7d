"""Approval requests in Firestore, one document per link (``approvals/{nonce}``).

Consumption is an optimistic compare-and-set on the request document itself: read it,
and if it is still open, update it with a ``last_update_time`` precondition. Of any
number of concurrent POSTs exactly one update commits; the others fail the precondition,
read again and find the decision already there. This keeps the decision (who, when,
what, why, user agent) and the "used" mark in one atomic write. Read-write transactions
are avoided on purpose: they contend badly on the emulator (see DESIGN.md).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from shared.app.config import Settings
from shared.domain.approval_record import (
    ApprovalNotFound,
    ApprovalRecord,
    decision_fields,
)
from shared.domain.errors import TransientError
from shared.domain.wake import RECORD_RETENTION_S

CAS_ATTEMPTS = 8


class FirestoreApprovalStore:
    def __init__(self, client: Any, settings: Settings):
        self._client = client
        self._collection = client.collection(settings.collection("approvals"))

    def create(self, record: ApprovalRecord) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            # Kept a while past the link's own expiry for the audit, then deleted by the TTL policy (deploy/).
            expire_at = datetime.fromtimestamp(record.expires_at + RECORD_RETENTION_S, timezone.utc)
            self._collection.document(record.nonce).create({**record.to_dict(), "expire_at": expire_at})
            return True
        except AlreadyExists:
            return False

    def get(self, nonce: str) -> ApprovalRecord | None:
        snapshot = self._collection.document(nonce).get()
        return ApprovalRecord.from_dict(nonce, snapshot.to_dict()) if snapshot.exists else None

    def find_open(self, release_id: str, stage: str, attempt: int, approver: str) -> ApprovalRecord | None:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = (
            self._collection.where(filter=FieldFilter("release_id", "==", release_id))
            .where(filter=FieldFilter("stage", "==", stage))
            .where(filter=FieldFilter("attempt", "==", attempt))
            .where(filter=FieldFilter("approver", "==", approver))
        )
        for snapshot in query.stream():
            record = ApprovalRecord.from_dict(snapshot.id, snapshot.to_dict())
            if not record.consumed:
                return record
        return None

    def consume(self, nonce: str, decision: str, reason: str, user_agent: str, now: float) -> bool:
        from google.api_core.exceptions import FailedPrecondition

        fields = decision_fields(decision, reason, user_agent, now)
        ref = self._collection.document(nonce)
        for _ in range(CAS_ATTEMPTS):
            snapshot = ref.get()
            if not snapshot.exists:
                raise ApprovalNotFound(f"no approval request {nonce[:6]}…")
            if snapshot.get("consumed_at") is not None:
                return False
            try:
                ref.update(fields, option=self._client.write_option(last_update_time=snapshot.update_time))
                return True
            except FailedPrecondition:
                continue  # someone else wrote in between: read again, most likely to find it used
        raise TransientError(f"approval request {nonce[:6]}… kept changing; try again")

    def mark_published(self, nonce: str, message_id: str) -> None:
        self._collection.document(nonce).update({"message_id": message_id})
