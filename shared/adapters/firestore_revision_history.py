"""RevisionHistories over Cloud Firestore: ``revision_history/{service}``, one document per
service, changed by read + update with an update-time precondition (as releases are)."""
from __future__ import annotations

from typing import Callable

from google.api_core import exceptions as gexc

from shared.app.config import Settings
from shared.domain.errors import TransientError
from shared.domain.revision_history import ServiceHistory, history_from_dict, history_to_dict

MAX_ATTEMPTS = 10


class FirestoreRevisionHistories:
    def __init__(self, client, settings: Settings):
        self.client = client
        self.collection = client.collection(settings.collection("revision_history"))

    def read(self, service: str) -> ServiceHistory:
        snapshot = self.collection.document(service).get()
        return history_from_dict(snapshot.to_dict(), service) if snapshot.exists else ServiceHistory(service)

    def change(self, service: str, change: Callable[[ServiceHistory], ServiceHistory]) -> ServiceHistory:
        doc = self.collection.document(service)
        for _ in range(MAX_ATTEMPTS):
            snapshot = doc.get()
            before = history_from_dict(snapshot.to_dict(), service) if snapshot.exists else ServiceHistory(service)
            after = change(before)
            if after == before:
                return before
            try:
                if snapshot.exists:
                    doc.update(history_to_dict(after),
                               option=self.client.write_option(last_update_time=snapshot.update_time))
                else:
                    doc.create(history_to_dict(after))
                return after
            except (gexc.FailedPrecondition, gexc.AlreadyExists):
                continue  # someone else wrote first: read again and apply the change to theirs
        raise TransientError(f"revision history of {service}: too many concurrent changes; retry")
