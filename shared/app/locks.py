"""One release at a time per application and environment, and versions that only move forward in prod.

Both live in the application's record ``apps/{app}`` (port ``AppRecords``, the frozen
``AppRecord`` of shared/domain/app_record.py: a lock per environment with its holder, the
holder's services, its queue and the releases it superseded; the version floor, the highest
version that entered prod; the freeze, set by ``relctl freeze``, and every freeze and
unfreeze with who, when and why; the stage medians), changed
by conditional writes (update-time precondition) like the releases: read, build the new
record, write it whole, read again when another writer came first.

An application is what one pipeline file releases (its name). Releases of two
applications never queue behind or supersede each other, except that two applications
that deploy the same Cloud Run service take turns on that service, first come first
served (per-service locks, shared/app/service_locks.py); the grant is published only
once the release holds its application's lock and every one of its services' locks.

Lock policy: a release that wants an environment another release of the same
application holds joins the queue. When the holder gives it back, the NEWEST queued
release gets it and every older queued release is superseded: its changes are in the
newer commit, and deploying it after the newer one would roll the environment back.

Version floor: a release enters prod (is granted the prod lock, which happens only
past its approval) only when its version is higher than the floor; then the floor
becomes its version, in the same write. A release whose version is not higher is
superseded with a reason naming both versions. Nothing lowers the floor, a rollback
neither, so the next release must still be higher than the one rolled back.

The outcome reaches the releases as events (``lock.granted``, ``release.superseded``)
published after the write; the dispatcher applies them only when this record says
the same (``confirms``), so a forged grant changes nothing.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

import semver

from shared.app.config import Settings
from shared.app.ports import AppRecords, EventPublisher, ServiceLockRecords
from shared.app.service_locks import ServiceLocks
from shared.app.stage_medians import record_durations
from shared.domain.app_record import (
    FREEZE_HISTORY_KEPT, AppRecord, EnvironmentLock, Freeze, FreezeChange, QueuedRelease, Supersession, VersionFloor,
)
from shared.domain.errors import PipelineError, StaleWrite, TransientError
from shared.domain.events import LockGranted, Superseded

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 20


class AlreadyFrozen(PipelineError):
    """A freeze is in force; it is not silently replaced."""

    def __init__(self, app: str, freeze: Freeze):
        super().__init__(f"prod of {app} is already frozen by {freeze.by or '?'}: {freeze.reason}")
        self.freeze = freeze


FLOOR_ENVIRONMENT = "prod"  # the protected environment whose versions only move forward


def higher(version: str, than: str) -> bool:
    """Semver comparison; a version that does not parse is never higher (fail closed)."""
    try:
        return semver.Version.parse(version) > semver.Version.parse(than)
    except (ValueError, TypeError):
        return False


class EnvironmentLocks:
    """The Locks port (shared/app/ports.py) over any AppRecords: Firestore's or the in-memory fake."""

    def __init__(self, records: AppRecords, publisher: EventPublisher, settings: Settings,
                 service_records: ServiceLockRecords):
        self.records = records
        self.publisher = publisher
        self.settings = settings
        self.services = ServiceLocks(service_records)  # ``service_locks/{service}``

    def acquire(self, app: str, environment: str, release_id: str, created_at: float, version: str = "",
                services: tuple[str, ...] = ()) -> str:
        """'granted', 'queued' or 'superseded'; the matching event is published. ``services``:
        the Cloud Run services the release changes in ``environment`` (their locks come too)."""
        wanted = tuple(sorted(set(services)))
        for _ in range(MAX_CONFLICT_RETRIES):
            record, token = self.records.read(app)
            lock = record.lock(environment)
            if release_id in lock.superseded:
                self._superseded(environment, release_id, lock.superseded[release_id])
                return "superseded"
            if lock.holder == release_id:
                # Asked again: the first grant may be lost, or a service lock not taken yet.
                return self._take_services(app, environment, release_id, lock.services)
            below = _below_floor(record, environment, release_id, version)
            if below:
                lock = lock.supersede(release_id, below)
                outcome = "superseded"
            elif lock.holder == "" and not record.frozen(environment):
                lock = replace(lock, holder=release_id, services=wanted, queue=lock.without(release_id))
                record = _raise_floor(record, environment, release_id, version)
                outcome = "granted"
            elif not lock.queued(release_id):
                lock = replace(lock, queue=lock.queue + (QueuedRelease(release_id, created_at, version, wanted),))
                outcome = "queued"
            else:
                return "queued"  # already waiting: nothing to write
            try:
                self.records.write(app, record.with_lock(environment, lock), token)
            except StaleWrite:
                continue
            if outcome == "granted":
                return self._take_services(app, environment, release_id, lock.services)
            if outcome == "superseded":
                self._superseded(environment, release_id, below)
            return outcome
        raise TransientError(f"lock {app}/{environment}: too many concurrent changes", release_id=release_id)

    def release(self, app: str, environment: str, release_id: str) -> str | None:
        """Give the environment back; returns the release that gets it next, if any."""
        for _ in range(MAX_CONFLICT_RETRIES):
            record, token = self.records.read(app)
            lock = record.lock(environment)
            superseded: dict[str, Supersession] = {}
            if lock.holder == release_id:
                # The services first, while the application lock still says which they are.
                for other, other_app in self.services.give_back(environment, release_id, list(lock.services)):
                    self._carry_on(other_app, environment, other)
            if lock.holder != release_id:
                if not lock.queued(release_id):
                    return None  # not held, not queued: a repeated release, nothing to do
                lock = replace(lock, queue=lock.without(release_id))
                successor = None
            else:
                record, successor, superseded = _hand_over(record, replace(lock, holder="", services=()), environment)
                lock = record.lock(environment)
            try:
                self.records.write(app, record.with_lock(environment, lock), token)
            except StaleWrite:
                continue
            for rid, why in superseded.items():
                self._superseded(environment, rid, why)
            if successor:
                self._take_services(app, environment, successor, lock.services)
            return successor
        raise TransientError(f"lock {app}/{environment}: too many concurrent changes", release_id=release_id)

    def set_freeze(self, app: str, freeze: Mapping[str, Any] | None, *, by: str = "", at: float | None = None,
                   replace_existing: bool = True) -> str | None:
        """Freeze prod ({by, at, reason}) or lift it (None). A release already in prod finishes; no
        new one enters until it is lifted; then the lock goes on as if given back just now.
        Each change is kept in ``freeze_history`` (who, when, why). ``replace_existing=False``: a
        freeze in force is not overwritten (AlreadyFrozen names it), so a second freeze cannot lose
        the first's reason."""
        frozen = Freeze(str(freeze.get("by") or ""), freeze.get("at"), str(freeze.get("reason") or "")) if freeze else None
        change = (FreezeChange("freeze", frozen.by, frozen.at, frozen.reason) if frozen
                  else FreezeChange("unfreeze", by, at, ""))
        for _ in range(MAX_CONFLICT_RETRIES):
            record, token = self.records.read(app)
            if frozen and record.freeze is not None and not replace_existing:
                raise AlreadyFrozen(app, record.freeze)
            record = replace(record, freeze=frozen,
                             freeze_history=(*record.freeze_history, change)[-FREEZE_HISTORY_KEPT:])
            successor, superseded = (None, {})
            if not frozen and record.lock("prod").holder == "":
                record, successor, superseded = _hand_over(record, record.lock("prod"), "prod")
            try:
                self.records.write(app, record.with_lock("prod", record.lock("prod")), token)
            except StaleWrite:
                continue
            for rid, why in superseded.items():
                self._superseded("prod", rid, why)
            if successor:
                self._take_services(app, "prod", successor, record.lock("prod").services)
            return successor
        raise TransientError(f"freeze of {app}: too many concurrent changes")

    def confirms(self, app: str, event: LockGranted | Superseded) -> str:
        """Why the application's record does not back this lock event ("" when it does)."""
        record, _ = self.records.read(app)
        lock = record.lock(event.environment)
        if isinstance(event, LockGranted):
            if lock.holder != event.release_id:
                return f"{app}/{event.environment} is held by {lock.holder or 'nobody'}, not {event.release_id}"
            return self.services.not_held(event.environment, event.release_id, list(lock.services))
        recorded = lock.superseded.get(event.release_id)
        if recorded is None or recorded.by != event.superseded_by:
            return f"{app}/{event.environment} records no supersession of {event.release_id} by {event.superseded_by}"
        return ""

    def record_durations(self, app: str, release_id: str, durations: Mapping[str, float]) -> None:
        record_durations(self.records, app, release_id, durations)

    # -- the services' locks ----------------------------------------------------------
    def _take_services(self, app: str, environment: str, release_id: str, services: tuple[str, ...]) -> str:
        """The application lock is held: take the services' locks in order; grant when all are held."""
        waiting_for = self.services.take(app, environment, release_id, services)
        if waiting_for:
            log.info("release %s holds %s/%s and waits for service %s", release_id, app, environment, waiting_for)
            return "queued"
        self._granted(environment, release_id)
        return "granted"

    def _carry_on(self, app: str, environment: str, release_id: str) -> None:
        """A service lock was handed to ``release_id`` (of ``app``): it takes the rest of its locks."""
        lock = self.records.read(app)[0].lock(environment)
        if lock.holder == release_id:
            self._take_services(app, environment, release_id, lock.services)

    # -- events -------------------------------------------------------------------------
    def _granted(self, environment: str, release_id: str) -> None:
        log.info("lock %s granted to %s", environment, release_id)
        self.publisher.publish(self.settings.events_topic, LockGranted("", release_id, environment))

    def _superseded(self, environment: str, release_id: str, why: Supersession) -> None:
        log.info("release %s superseded by %s (%s)", release_id, why.by, why.reason or environment)
        self.publisher.publish(self.settings.events_topic,
                               Superseded("", release_id, environment, why.by, why.reason))


def _hand_over(record: AppRecord, lock: EnvironmentLock, environment: str
               ) -> tuple[AppRecord, str | None, dict[str, Supersession]]:
    """A free lock goes to the NEWEST queued release; older queued ones are superseded.
    While prod is frozen nobody gets it and the queue waits as it is."""
    superseded: dict[str, Supersession] = {}
    if record.frozen(environment) or not lock.queue:
        return record.with_lock(environment, lock), None, superseded
    successor, services = None, lock.services
    for queued in sorted(lock.queue, key=lambda q: (q.created_at, q.release_id), reverse=True):
        below = _below_floor(record, environment, queued.release_id, queued.version)
        if successor is None and not below:
            successor, services = queued.release_id, queued.services
            record = _raise_floor(record, environment, queued.release_id, queued.version)
        else:
            superseded[queued.release_id] = below or Supersession(successor or "", "")
    lock = replace(lock, holder=successor or "", services=services, queue=())
    for rid, why in superseded.items():
        lock = lock.supersede(rid, why)
    return record.with_lock(environment, lock), successor, superseded


# -- the version floor ----------------------------------------------------------------
def _below_floor(record: AppRecord, environment: str, release_id: str, version: str) -> Supersession | None:
    floor = record.version_floor
    if environment != FLOOR_ENVIRONMENT or not floor.version or floor.release_id == release_id:
        return None
    if higher(version, floor.version):
        return None
    return Supersession(floor.release_id,
                        f"version {version or '(none)'} is not higher than {floor.version}, which release "
                        f"{floor.release_id} already took to prod; versions only move forward there")


def _raise_floor(record: AppRecord, environment: str, release_id: str, version: str) -> AppRecord:
    floor = record.version_floor
    if environment == FLOOR_ENVIRONMENT and version and (not floor.version or higher(version, floor.version)):
        return replace(record, version_floor=VersionFloor(version, release_id))
    return record
