"""The stored document of ``apps/{app}`` to and from ``AppRecord`` (shared/domain/app_record.py):
the one module that reads its keys (the Firestore records and the in-memory fake both use it).

What is stored stays as earlier versions wrote it, so their documents still read::

    {"locks": {env: {holder, services: [...],
                     queue: [{release_id, created_at, version, services}], superseded: {id: {by, reason}}}},
     "version_floor": {"version", "release_id"}, "stage_medians": {...}, "freeze": {"by", "at", "reason"} or {},
     "freeze_history": [{"action", "by", "at", "reason"}]}

Reading is forgiving where old documents differ (a lock without ``services``, a queued release
without ``version``, no ``freeze``); a field of the wrong type reads as absent.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.app_record import (
    AppRecord, EnvironmentLock, Freeze, FreezeChange, QueuedRelease, Supersession, VersionFloor,
)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def _text(value: Any) -> str:
    return str(value) if value else ""


def _lock(doc: Mapping[str, Any]) -> EnvironmentLock:
    queue = tuple(QueuedRelease(_text(q.get("release_id")), float(q.get("created_at") or 0),
                                _text(q.get("version")), _names(q.get("services")))
                  for q in doc.get("queue") or () if isinstance(q, Mapping))
    superseded = {str(rid): Supersession(_text(_map(why).get("by")), _text(_map(why).get("reason")))
                  for rid, why in _map(doc.get("superseded")).items()}
    return EnvironmentLock(_text(doc.get("holder")), _names(doc.get("services")), queue, superseded)


def decode_app_record(doc: Mapping[str, Any] | None) -> AppRecord:
    """The record from its stored document (None: never written, the empty record)."""
    doc = _map(doc)
    floor = _map(doc.get("version_floor"))
    freeze = _map(doc.get("freeze"))
    return AppRecord(
        locks={str(env): _lock(_map(lock)) for env, lock in _map(doc.get("locks")).items()},
        version_floor=VersionFloor(_text(floor.get("version")), _text(floor.get("release_id"))),
        freeze=Freeze(_text(freeze.get("by")), freeze.get("at"), _text(freeze.get("reason"))) if freeze else None,
        stage_medians=dict(_map(doc.get("stage_medians"))),
        freeze_history=tuple(
            FreezeChange(_text(e.get("action")), _text(e.get("by")),
                         e.get("at") if isinstance(e.get("at"), (int, float)) else None, _text(e.get("reason")))
            for e in doc.get("freeze_history") or () if isinstance(e, Mapping)),
    )


def encode_app_record(record: AppRecord) -> dict[str, Any]:
    """The document to write: every field whole (a Firestore update replaces each top-level field)."""
    return {
        "locks": {env: {"holder": lock.holder, "services": list(lock.services),
                        "queue": [{"release_id": q.release_id, "created_at": q.created_at, "version": q.version,
                                   "services": list(q.services)} for q in lock.queue],
                        "superseded": {rid: {"by": why.by, "reason": why.reason}
                                       for rid, why in lock.superseded.items()}}
                  for env, lock in record.locks.items()},
        "version_floor": {"version": record.version_floor.version, "release_id": record.version_floor.release_id},
        "stage_medians": dict(record.stage_medians),
        "freeze": ({"by": record.freeze.by, "at": record.freeze.at, "reason": record.freeze.reason}
                   if record.freeze else {}),
        "freeze_history": [{"action": e.action, "by": e.by, "at": e.at, "reason": e.reason}
                           for e in record.freeze_history],
    }
