"""OperatorRequestLog over Firestore: ``operator_requests/{request_id}``, create-only."""
from __future__ import annotations

from typing import Any, Mapping

from google.api_core import exceptions as gexc

from shared.app.config import Settings


class FirestoreOperatorRequests:
    def __init__(self, client, settings: Settings):
        self.collection = client.collection(settings.collection("operator_requests"))

    def record(self, request_id: str, request: Mapping[str, Any]) -> bool:
        try:
            self.collection.document(request_id).create(dict(request))
            return True
        except gexc.AlreadyExists:
            return False

    def get(self, request_id: str) -> Mapping[str, Any] | None:
        snapshot = self.collection.document(request_id).get()
        return snapshot.to_dict() if snapshot.exists else None
