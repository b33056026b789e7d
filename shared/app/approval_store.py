"""Approval requests, one document per link (``approvals/{nonce}``), consumed exactly once.

Consumption is an optimistic compare-and-set on the request document itself: read it,
and if it is still open, update it with a ``last_update_time`` precondition. Of any
number of concurrent POSTs exactly one update commits; the others fail the precondition,
read again and find the decision already there. This keeps the decision (who, when,
what, why, user agent) and the "used" mark in one atomic write. Read-write transactions
are avoided on purpose: they contend badly on the emulator (see DESIGN.md).
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from shared.app.config import Settings
from shared.domain.errors import PipelineError, TransientError

CAS_ATTEMPTS = 8


class ApprovalNotFound(PipelineError):
    """No approval request exists for this nonce."""


@dataclass(frozen=True)
class ApprovalRecord:
    nonce: str
    release_id: str
    stage: str
    attempt: int
    approver: str
    expires_at: float
    tag: str
    created_at: float
    consumed_at: float | None = None
    decision: str = ""  # "approved" | "rejected" once consumed
    reason: str = ""
    user_agent: str = ""
    message_id: str = ""  # the published event, once delivered
    digest: str = ""  # the image digest the link approves

    @property
    def consumed(self) -> bool:
        return self.consumed_at is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("nonce")
        return data

    @classmethod
    def from_dict(cls, nonce: str, data: dict[str, Any]) -> "ApprovalRecord":
        known = set(cls.__dataclass_fields__) - {"nonce"}
        return cls(nonce=nonce, **{k: v for k, v in data.items() if k in known})


class ApprovalStore(Protocol):
    def create(self, record: ApprovalRecord) -> bool:
        """Create-only; False when the nonce exists already."""

    def get(self, nonce: str) -> ApprovalRecord | None: ...

    def find_open(self, release_id: str, stage: str, attempt: int, approver: str) -> ApprovalRecord | None:
        """An unconsumed request for exactly this approver and attempt, to resend its link."""

    def consume(self, nonce: str, decision: str, reason: str, user_agent: str, now: float) -> bool:
        """Record the decision; True for exactly one caller per nonce, False once used.
        Raises ApprovalNotFound when there is no such request."""

    def mark_published(self, nonce: str, message_id: str) -> None: ...


def _decision_fields(decision: str, reason: str, user_agent: str, now: float) -> dict[str, Any]:
    if decision not in ("approved", "rejected"):
        raise ValueError(f"decision must be approved or rejected, not {decision!r}")
    return {"consumed_at": now, "decision": decision, "reason": reason, "user_agent": user_agent}


class InMemoryApprovalStore:
    """The fake: same contract as the Firestore store, one lock instead of preconditions."""

    def __init__(self) -> None:
        self._records: dict[str, ApprovalRecord] = {}
        self._lock = threading.Lock()

    def create(self, record: ApprovalRecord) -> bool:
        with self._lock:
            if record.nonce in self._records:
                return False
            self._records[record.nonce] = record
            return True

    def get(self, nonce: str) -> ApprovalRecord | None:
        with self._lock:
            return self._records.get(nonce)

    def find_open(self, release_id: str, stage: str, attempt: int, approver: str) -> ApprovalRecord | None:
        with self._lock:
            for r in self._records.values():
                if (r.release_id, r.stage, r.attempt, r.approver) == (release_id, stage, attempt, approver) and not r.consumed:
                    return r
        return None

    def consume(self, nonce: str, decision: str, reason: str, user_agent: str, now: float) -> bool:
        fields = _decision_fields(decision, reason, user_agent, now)
        with self._lock:
            record = self._records.get(nonce)
            if record is None:
                raise ApprovalNotFound(f"no approval request {nonce[:6]}…")
            if record.consumed:
                return False
            self._records[nonce] = replace(record, **fields)
            return True

    def mark_published(self, nonce: str, message_id: str) -> None:
        with self._lock:
            self._records[nonce] = replace(self._records[nonce], message_id=message_id)


class FirestoreApprovalStore:
    def __init__(self, client: Any, settings: Settings):
        self._client = client
        self._collection = client.collection(settings.collection("approvals"))

    def create(self, record: ApprovalRecord) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._collection.document(record.nonce).create(record.to_dict())
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

        fields = _decision_fields(decision, reason, user_agent, now)
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
