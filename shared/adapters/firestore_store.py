"""ReleaseStore over Cloud Firestore.

One document per release, written with an update-time precondition (optimistic
compare-and-set). Not read-write transactions: on the emulator they serialise badly
(DESIGN.md: 28.7 s and lock timeouts for 40 contended increments, 0.5 s with
preconditions), and one conditional write is all a transition needs.

A write conditional on the update time this store last read or wrote sends only the fields
that differ from that version (``changed_fields``): the precondition guarantees the server
holds exactly that version, and encoding the whole document into protobuf was most of a
transition's write (4.4 of 5.4 ms for a 15-stage release).
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from shared.app.config import Settings
from shared.domain.errors import DefinitionError, DocumentTooLarge, StaleWrite
from shared.domain.pipeline import Pipeline, pipeline_from_stored, stored_pipeline
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
        # release id -> (update time, the document at that time), as this process last read or
        # wrote it: the base of the next write's diff. Bounded; threads of one process share it.
        self._known: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._known_lock = threading.Lock()

    def get(self, release_id: str) -> tuple[ReleaseState, Any] | None:
        snapshot = self.releases.document(release_id).get()
        if not snapshot.exists:
            return None
        data = snapshot.to_dict()
        # A copy: the state decoded from ``data`` shares its lists and maps, and the gate's
        # changes to them must show up as differences.
        self._remember(release_id, snapshot.update_time, copy.deepcopy(data))
        return _state(data), snapshot.update_time

    def create(self, state: ReleaseState) -> bool:
        document = _document(state)
        try:
            result = self.releases.document(state.release_id).create(document)
        except gexc.AlreadyExists:
            return False
        self._remember(state.release_id, result.update_time, document)
        return True

    def update(self, state: ReleaseState, token: Any) -> Any:
        option = self.client.write_option(last_update_time=token)
        document = _document(state)
        with self._known_lock:
            known = self._known.get(state.release_id)
        changed = changed_fields(known[1], document) if known is not None and known[0] == token else {}
        # Nothing known at this time (or nothing changed): the whole document, as before.
        fields = field_paths(changed) or document
        try:
            result = self.releases.document(state.release_id).update(fields, option=option)
        except gexc.FailedPrecondition:
            raise StaleWrite("release changed since it was read", release_id=state.release_id) from None
        except gexc.InvalidArgument as exc:
            raise _too_large(exc, state.release_id) from None
        self._remember(state.release_id, result.update_time, document)
        return result.update_time

    def update_fields(self, release_id: str, fields: Mapping[tuple[str, ...], Any], token: Any) -> Any:
        option = self.client.write_option(last_update_time=token)
        try:
            result = self.releases.document(release_id).update(field_paths(fields), option=option)
        except gexc.FailedPrecondition:
            raise StaleWrite("release changed since it was read", release_id=release_id) from None
        except gexc.InvalidArgument as exc:
            raise _too_large(exc, release_id) from None
        return result.update_time

    def _remember(self, release_id: str, update_time: Any, document: dict[str, Any]) -> None:
        with self._known_lock:
            self._known[release_id] = (update_time, document)
            self._known.move_to_end(release_id)
            while len(self._known) > KNOWN_RELEASES:
                self._known.popitem(last=False)

    def list_releases(self, limit: int = 50) -> list[ReleaseState]:
        query = self.releases.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit)
        return [_state(doc.to_dict()) for doc in query.stream()]

    def list_due(self, now: float, limit: int, after: Any = None) -> tuple[list[tuple[ReleaseState, Any]], Any]:
        # A range and an order on the one field wake_at: Firestore's automatic single-field
        # index serves it (deploy/firestore_indexes.py); a release without wake_at is never read.
        query = (self.releases.where(filter=FieldFilter("wake_at", "<=", now)).order_by("wake_at")
                 .limit(limit))
        if after is not None:
            query = query.start_after(after)
        page = list(query.stream())
        cursor = page[-1] if len(page) == limit else None
        return [(_state(doc.to_dict()), doc.update_time) for doc in page], cursor

    def save_pipeline(self, pipeline: Pipeline) -> None:
        if pipeline.digest in self._pipeline_cache:
            return
        try:
            self.pipelines.document(pipeline.digest).create(stored_pipeline(pipeline))
        except gexc.AlreadyExists:
            pass
        self._pipeline_cache[pipeline.digest] = pipeline

    def load_pipeline(self, digest: str) -> Pipeline:
        if digest not in self._pipeline_cache:
            snapshot = self.pipelines.document(digest).get()
            if not snapshot.exists:
                raise DefinitionError(f"pipeline definition {digest[:12]} is not stored")
            self._pipeline_cache[digest] = pipeline_from_stored(snapshot.to_dict())
        return self._pipeline_cache[digest]

    def claim_delivery(self, delivery_id: str, info: Mapping[str, Any]) -> bool:
        try:
            self.deliveries.document(doc_id(delivery_id)).create(
                {**dict(info), "expire_at": expires_in(RECORD_RETENTION_S)})
            return True
        except gexc.AlreadyExists:
            return False


KNOWN_RELEASES = 256  # documents kept as diff bases: a dispatcher instance serves few releases at once


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """The field paths to update so that a document ``old`` becomes ``new``, as the whole-document
    update did: every top-level field of ``new`` gets its value (one absent from ``new`` is left
    alone), and below the top a map key absent from ``new`` is deleted. Maps present on both
    sides are compared key by key; anything else is replaced when it differs in value or type
    (1 and 1.0 are equal in Python, not in Firestore)."""
    changes: dict[tuple[str, ...], Any] = {}

    def walk(path: tuple[str, ...], before: Mapping[str, Any], after: Mapping[str, Any], top: bool) -> None:
        for key, value in after.items():
            if key not in before:
                changes[(*path, key)] = value
            elif isinstance(value, dict) and isinstance(before[key], dict) and value and before[key]:
                walk((*path, key), before[key], value, top=False)
            elif not _same(before[key], value):
                changes[(*path, key)] = value
        if not top:
            for key in before.keys() - after.keys():
                changes[(*path, key)] = firestore.DELETE_FIELD

    walk((), old, new, top=True)
    return changes


def field_paths(fields: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """Paths as ``DocumentReference.update`` takes them: FieldPath quotes segments such as stage
    ids with '-' in them."""
    return {FieldPath(*path).to_api_repr(): value for path, value in fields.items()}


def _same(a: Any, b: Any) -> bool:
    """Equal as Firestore stores them: same type at every level (a tuple is stored as an array)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _document(state: ReleaseState) -> dict[str, Any]:
    """The release as stored: ``expire_at`` as a timestamp, the only type a TTL policy reads."""
    data = state.to_dict()
    if data.get("expire_at") is not None:
        data["expire_at"] = datetime.fromtimestamp(data["expire_at"], timezone.utc)
    return data


def _state(data: dict[str, Any]) -> ReleaseState:
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
