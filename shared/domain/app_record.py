"""The per-application record ``apps/{app}`` as types: its locks per environment, its version
floor, its deploy freeze and its stage medians (shared/app/locks.py says what each means).

Frozen: a change is a new record (``with_lock``, ``dataclasses.replace``) written whole by one
conditional write. The stored document is read and written only in
shared/adapters/app_record_doc.py; everyone else reads fields (tests/unit/test_layers.py fails
on a key read of the record elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

SUPERSEDED_KEPT = 200  # the newest supersessions a lock remembers (to answer a late acquire)


@dataclass(frozen=True)
class QueuedRelease:
    release_id: str
    created_at: float
    version: str = ""
    services: tuple[str, ...] = ()  # the Cloud Run services it will change (shared/app/service_locks.py)


@dataclass(frozen=True)
class Supersession:
    by: str  # the release that took over ("" when none did: the queue was cleared)
    reason: str = ""  # why, when it is not simply "a newer release" (the version floor)


@dataclass(frozen=True)
class EnvironmentLock:
    holder: str = ""  # the release that holds the environment, "" when free
    services: tuple[str, ...] = ()  # the holder's services
    queue: tuple[QueuedRelease, ...] = ()
    superseded: Mapping[str, Supersession] = field(default_factory=dict)  # oldest first

    def queued(self, release_id: str) -> bool:
        return any(q.release_id == release_id for q in self.queue)

    def without(self, release_id: str) -> tuple[QueuedRelease, ...]:
        """The queue without ``release_id``."""
        return tuple(q for q in self.queue if q.release_id != release_id)

    def supersede(self, release_id: str, why: Supersession) -> EnvironmentLock:
        """Out of the queue, remembered as superseded (the newest SUPERSEDED_KEPT)."""
        superseded = dict(self.superseded)
        superseded[release_id] = why
        return replace(self, queue=self.without(release_id),
                       superseded=dict(list(superseded.items())[-SUPERSEDED_KEPT:]))


@dataclass(frozen=True)
class VersionFloor:
    version: str = ""  # the highest version that entered prod, "" before the first
    release_id: str = ""  # the release that took it there


@dataclass(frozen=True)
class Freeze:
    by: str
    at: float | None
    reason: str


@dataclass(frozen=True)
class FreezeChange:
    """One freeze or unfreeze of prod, kept so the timeline can say who, when and why."""
    action: str  # "freeze" or "unfreeze"
    by: str
    at: float | None
    reason: str


FREEZE_HISTORY_KEPT = 50  # the newest changes; bounds the document


@dataclass(frozen=True)
class AppRecord:
    locks: Mapping[str, EnvironmentLock] = field(default_factory=dict)
    version_floor: VersionFloor = VersionFloor()
    freeze: Freeze | None = None  # set: no release enters prod (relctl freeze)
    # Per-stage durations (shared/domain/progress.py owns their shape): the ETA's history.
    stage_medians: Mapping[str, Any] = field(default_factory=dict)
    freeze_history: tuple[FreezeChange, ...] = ()  # every freeze and unfreeze, newest last

    def lock(self, environment: str) -> EnvironmentLock:
        return self.locks.get(environment) or EnvironmentLock()

    def with_lock(self, environment: str, lock: EnvironmentLock) -> AppRecord:
        return replace(self, locks={**self.locks, environment: lock})

    def frozen(self, environment: str) -> bool:
        """A deploy freeze holds back every release that would enter prod."""
        return environment == "prod" and self.freeze is not None
