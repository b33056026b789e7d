"""ReleaseStore over Cloud Firestore.

One document per release, written whole with an update-time precondition
(optimistic compare-and-set). Not read-write transactions: on the emulator they
serialise badly (DESIGN.md: 28.7 s and lock timeouts for 40 contended increments,
0.5 s with preconditions), and one conditional write is all a transition needs.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from shared.app.config import Settings
from shared.domain.errors import DefinitionError, DocumentTooLarge, StaleWrite
from shared.domain.pipeline import Pipeline, parse_pipeline, thaw
from shared.domain.state import ReleaseState
from shared.domain.wake import RECORD_RETENTION_S


class FirestoreStore:
    def __init__(self, client: firestore.Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.releases = client.collection(settings.collection("releases"))
        self.pipelines = client.collection(settings.collection("pipelines"))
        self.deliveries = client.collection(settings.collection("deliveries"))
        self._pipeline_cache: dict[str, Pipeline] = {}

    def get(self, release_id: str) -> tuple[ReleaseState, Any] | None:
        snapshot = self.releases.document(release_id).get()
        if not snapshot.exists:
            return None
        return _state(snapshot), snapshot.update_time

    def create(self, state: ReleaseState) -> bool:
        try:
            self.releases.document(state.release_id).create(_document(state))
            return True
        except gexc.AlreadyExists:
            return False

    def update(self, state: ReleaseState, token: Any) -> Any:
        option = self.client.write_option(last_update_time=token)
        try:
            result = self.releases.document(state.release_id).update(_document(state), option=option)
        except gexc.FailedPrecondition:
            raise StaleWrite("release changed since it was read", release_id=state.release_id) from None
        except gexc.InvalidArgument as exc:
            raise _too_large(exc, state.release_id) from None
        return result.update_time

    def update_fields(self, release_id: str, fields: Mapping[tuple[str, ...], Any], token: Any) -> Any:
        option = self.client.write_option(last_update_time=token)
        # FieldPath quotes segments such as stage ids with '-' in them.
        paths = {FieldPath(*path).to_api_repr(): value for path, value in fields.items()}
        try:
            result = self.releases.document(release_id).update(paths, option=option)
        except gexc.FailedPrecondition:
            raise StaleWrite("release changed since it was read", release_id=release_id) from None
        except gexc.InvalidArgument as exc:
            raise _too_large(exc, release_id) from None
        return result.update_time

    def list_releases(self, limit: int = 50) -> list[ReleaseState]:
        query = self.releases.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [_state(doc) for doc in query.stream()]

    def list_due(self, now: float, limit: int, after: Any = None) -> tuple[list[tuple[ReleaseState, Any]], Any]:
        # A range and an order on the one field wake_at: Firestore's automatic single-field
        # index serves it (deploy/firestore_indexes.py); a release without wake_at is never read.
        query = (self.releases.where(filter=FieldFilter("wake_at", "<=", now)).order_by("wake_at")
                 .limit(limit))
        if after is not None:
            query = query.start_after(after)
        page = list(query.stream())
        cursor = page[-1] if len(page) == limit else None
        return [(_state(doc), doc.update_time) for doc in page], cursor

    def save_pipeline(self, pipeline: Pipeline) -> None:
        if pipeline.digest in self._pipeline_cache:
            return
        try:
            self.pipelines.document(pipeline.digest).create(
                {"name": pipeline.name, "document": json.dumps(thaw(pipeline.document), sort_keys=True)}
            )
        except gexc.AlreadyExists:
            pass
        self._pipeline_cache[pipeline.digest] = pipeline

    def load_pipeline(self, digest: str) -> Pipeline:
        if digest not in self._pipeline_cache:
            snapshot = self.pipelines.document(digest).get()
            if not snapshot.exists:
                raise DefinitionError(f"pipeline definition {digest[:12]} is not stored")
            self._pipeline_cache[digest] = parse_pipeline(json.loads(snapshot.get("document")))
        return self._pipeline_cache[digest]

    def claim_delivery(self, delivery_id: str, info: Mapping[str, Any]) -> bool:
        try:
            self.deliveries.document(doc_id(delivery_id)).create(
                {**dict(info), "expire_at": expires_in(RECORD_RETENTION_S)})
            return True
        except gexc.AlreadyExists:
            return False


def _document(state: ReleaseState) -> dict[str, Any]:
    """The release as stored: ``expire_at`` as a timestamp, the only type a TTL policy reads."""
    data = state.to_dict()
    if data.get("expire_at") is not None:
        data["expire_at"] = datetime.fromtimestamp(data["expire_at"], timezone.utc)
    return data


def _state(snapshot: Any) -> ReleaseState:
    data = snapshot.to_dict()
    if isinstance(data.get("expire_at"), datetime):
        data["expire_at"] = data["expire_at"].timestamp()
    return ReleaseState.from_dict(data)


def expires_in(seconds: float) -> datetime:
    """An ``expire_at`` value for a record kept ``seconds`` from now (TTL policies in deploy/)."""
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def _too_large(exc: Exception, release_id: str) -> Exception:
    """Firestore's size refusals ("maximum entity size", "longer than 1048487 bytes", "exceeds the
    maximum size") as DocumentTooLarge; any other InvalidArgument stays what it is."""
    text = str(exc).lower()
    if any(words in text for words in ("entity size", "longer than", "maximum size", "too large")):
        return DocumentTooLarge(f"Firestore refused the write: {str(exc)[:200]}", release_id=release_id)
    return exc


def doc_id(raw: str) -> str:
    """Firestore ids may not contain '/' nor be '.' or '..'."""
    cleaned = raw.replace("/", "_")[:500]
    return cleaned if cleaned.strip(".") else f"id-{cleaned}"
