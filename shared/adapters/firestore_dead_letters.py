"""The dead-letter store in Firestore: ``dead_letters/{id}``, create-only, newest first."""
from __future__ import annotations

import base64
from typing import Any

from shared.domain.dead_letters import MAX_KEPT_BYTES, DeadLetter
from shared.adapters.firestore_store import doc_id
from shared.app.config import Settings


class FirestoreDeadLetters:
    def __init__(self, client: Any, settings: Settings):
        self.collection = client.collection(settings.collection("dead_letters"))

    def record(self, letter: DeadLetter) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self.collection.document(doc_id(letter.id)).create(_to_document(letter))
            return True
        except AlreadyExists:
            return False  # a redelivery of the same message: kept once

    def get(self, letter_id: str) -> DeadLetter | None:
        snapshot = self.collection.document(doc_id(letter_id)).get()
        return _from_document(snapshot.to_dict()) if snapshot.exists else None

    def list(self, limit: int = 50) -> list[DeadLetter]:
        from google.cloud import firestore

        query = self.collection.order_by("received_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [_from_document(s.to_dict()) for s in query.stream()]

    def mark_redriven(self, letter_id: str, message_id: str, at: float) -> None:
        self.collection.document(doc_id(letter_id)).update({"redriven_as": message_id, "redriven_at": at})


def _to_document(letter: DeadLetter) -> dict[str, Any]:
    return {"id": letter.id, "reason": letter.reason, "source": letter.source, "received_at": letter.received_at,
            "data": base64.b64encode(letter.data[:MAX_KEPT_BYTES]).decode(), "attributes": dict(letter.attributes),
            "redriven_as": letter.redriven_as, "redriven_at": letter.redriven_at}


def _from_document(doc: dict[str, Any]) -> DeadLetter:
    return DeadLetter(id=doc["id"], reason=doc["reason"], source=doc["source"], received_at=doc["received_at"],
                      data=base64.b64decode(doc.get("data") or ""), attributes=doc.get("attributes") or {},
                      redriven_as=doc.get("redriven_as") or "", redriven_at=doc.get("redriven_at"))
