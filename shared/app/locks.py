"""One release at a time per application and environment, and versions that only move forward in prod.

Both live in the application's record ``apps/{app}`` (port ``AppRecords``), changed by
conditional writes (update-time precondition) like the releases::

    {"locks": {env: {holder, services: [...],         # the holder's services (shared/app/service_locks.py)
                     queue: [{release_id, created_at, version, services}], superseded: {id: {by, reason}}}},
     "version_floor": {"version", "release_id"},   # highest version that entered prod
     "stage_medians": {},                          # per-stage durations (shared/app/stage_medians.py)
     "freeze": {"by", "at", "reason"},             # set: no release enters prod (relctl freeze)
     "freeze_history": [{"action", "by", "at", "reason"}]}  # every freeze and unfreeze, newest last

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
from typing import Any, Mapping

import semver

from shared.app.config import Settings
from shared.app.ports import AppRecords, EventPublisher, empty_lock
from shared.app.service_locks import ServiceLocks
from shared.app.stage_medians import record_durations
from shared.domain.errors import PipelineError, StaleWrite, TransientError
from shared.domain.events import LockGranted, Superseded

log = logging.getLogger(__name__)
SUPERSEDED_KEPT = 200
MAX_CONFLICT_RETRIES = 20
FREEZE_HISTORY_KEPT = 50


class AlreadyFrozen(PipelineError):
    """A freeze is in force; it is not silently replaced."""

    def __init__(self, app: str, freeze: dict[str, Any]):
        super().__init__(f"prod of {app} is already frozen by {freeze.get('by', '?')}: {freeze.get('reason', '')}")
        self.freeze = freeze
FLOOR_ENVIRONMENT = "prod"  # the protected environment whose versions only move forward


def higher(version: str, than: str) -> bool:
    """Semver comparison; a version that does not parse is never higher (fail closed)."""
    try:
        return semver.Version.parse(version) > semver.Version.parse(than)
    except (ValueError, TypeError):
        return False


def frozen(data: dict[str, Any], environment: str) -> bool:
    """A deploy freeze holds back every release that would enter prod (``relctl freeze``)."""
    return environment == "prod" and bool(data.get("freeze"))


class EnvironmentLocks:
    """The Locks port (shared/app/ports.py) over any AppRecords: Firestore's or the in-memory fake."""

    def __init__(self, records: AppRecords, publisher: EventPublisher, settings: Settings,
                 service_records: AppRecords):
        self.records = records
        self.publisher = publisher
        self.settings = settings
        self.services = ServiceLocks(service_records)  # ``service_locks/{service}``

    def acquire(self, app: str, environment: str, release_id: str, created_at: float, version: str = "",
                services: tuple[str, ...] = ()) -> str:
        """'granted', 'queued' or 'superseded'; the matching event is published. ``services``:
        the Cloud Run services the release changes in ``environment`` (their locks come too)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.records.read(app)
            lock = data["locks"].setdefault(environment, empty_lock())
            if release_id in lock["superseded"]:
                self._superseded(environment, release_id, lock["superseded"][release_id])
                return "superseded"
            if lock["holder"] == release_id:
                # Asked again: the first grant may be lost, or a service lock not taken yet.
                return self._take_services(app, environment, release_id, lock.get("services", []))
            below = self._below_floor(data, environment, release_id, version)
            if below:
                self._supersede(lock, release_id, below)
                outcome = "superseded"
            elif lock["holder"] == "" and not frozen(data, environment):
                lock["holder"] = release_id
                lock["services"] = sorted(set(services))
                lock["queue"] = [q for q in lock["queue"] if q["release_id"] != release_id]
                self._raise_floor(data, environment, release_id, version)
                outcome = "granted"
            elif all(q["release_id"] != release_id for q in lock["queue"]):
                lock["queue"].append({"release_id": release_id, "created_at": created_at, "version": version,
                                      "services": sorted(set(services))})
                outcome = "queued"
            else:
                return "queued"  # already waiting: nothing to write
            try:
                self.records.write(app, data, token)
            except StaleWrite:
                continue
            if outcome == "granted":
                return self._take_services(app, environment, release_id, lock["services"])
            if outcome == "superseded":
                self._superseded(environment, release_id, below)
            return outcome
        raise TransientError(f"lock {app}/{environment}: too many concurrent changes", release_id=release_id)

    def release(self, app: str, environment: str, release_id: str) -> str | None:
        """Give the environment back; returns the release that gets it next, if any."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.records.read(app)
            lock = data["locks"].setdefault(environment, empty_lock())
            superseded: dict[str, dict[str, str]] = {}
            if lock["holder"] == release_id:
                # The services first, while the application lock still says which they are.
                for other, other_app in self.services.give_back(environment, release_id, lock.get("services", [])):
                    self._carry_on(other_app, environment, other)
            if lock["holder"] != release_id:
                queue = [q for q in lock["queue"] if q["release_id"] != release_id]
                if queue == lock["queue"]:
                    return None  # not held, not queued: a repeated release, nothing to do
                lock["queue"] = queue
                successor = None
            else:
                lock["holder"], lock["services"] = "", []
                successor, superseded = self._hand_over(data, lock, environment)
            try:
                self.records.write(app, data, token)
            except StaleWrite:
                continue
            for rid, why in superseded.items():
                self._superseded(environment, rid, why)
            if successor:
                self._take_services(app, environment, successor, lock["services"])
            return successor
        raise TransientError(f"lock {app}/{environment}: too many concurrent changes", release_id=release_id)

    def _hand_over(self, data: dict[str, Any], lock: dict[str, Any], environment: str
                   ) -> tuple[str | None, dict[str, dict[str, str]]]:
        """A free lock goes to the NEWEST queued release; older queued ones are superseded.
        While prod is frozen nobody gets it and the queue waits as it is."""
        superseded: dict[str, dict[str, str]] = {}
        if frozen(data, environment) or not lock["queue"]:
            return None, superseded
        successor = None
        for queued in sorted(lock["queue"], key=lambda q: (q["created_at"], q["release_id"]), reverse=True):
            rid = queued["release_id"]
            below = self._below_floor(data, environment, rid, queued.get("version", ""))
            if successor is None and not below:
                successor = rid
                lock["services"] = list(queued.get("services", []))
                self._raise_floor(data, environment, rid, queued.get("version", ""))
            else:
                superseded[rid] = below or {"by": successor or "", "reason": ""}
        lock["holder"] = successor or ""
        lock["queue"] = []
        for rid, why in superseded.items():
            self._supersede(lock, rid, why)
        return successor, superseded

    def set_freeze(self, app: str, freeze: dict[str, Any] | None, *, by: str = "", at: float | None = None,
                   replace: bool = True) -> str | None:
        """Freeze prod ({by, at, reason}) or lift it (None). A release already in prod finishes; no
        new one enters until it is lifted; then the lock goes on as if given back just now.
        Each change is kept in ``freeze_history`` (who, when, why). ``replace=False``: a freeze in
        force is not overwritten (AlreadyFrozen names it), so a second freeze cannot lose the first's reason."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.records.read(app)
            lock = data["locks"].setdefault("prod", empty_lock())
            if freeze and data.get("freeze") and not replace:
                raise AlreadyFrozen(app, dict(data["freeze"]))
            entry = {"action": "freeze" if freeze else "unfreeze", "by": (freeze or {}).get("by", by),
                     "at": (freeze or {}).get("at", at), "reason": (freeze or {}).get("reason", "")}
            data["freeze_history"] = (list(data.get("freeze_history") or []) + [entry])[-FREEZE_HISTORY_KEPT:]
            data["freeze"] = dict(freeze) if freeze else {}
            successor, superseded = (None, {})
            if not freeze and lock["holder"] == "":
                successor, superseded = self._hand_over(data, lock, "prod")
            try:
                self.records.write(app, data, token)
            except StaleWrite:
                continue
            for rid, why in superseded.items():
                self._superseded("prod", rid, why)
            if successor:
                self._take_services(app, "prod", successor, lock["services"])
            return successor
        raise TransientError(f"freeze of {app}: too many concurrent changes")

    def confirms(self, app: str, event: LockGranted | Superseded) -> str:
        """Why the application's record does not back this lock event ("" when it does)."""
        data, _ = self.records.read(app)
        lock = data["locks"].get(event.environment) or empty_lock()
        if isinstance(event, LockGranted):
            if lock["holder"] != event.release_id:
                return f"{app}/{event.environment} is held by {lock['holder'] or 'nobody'}, not {event.release_id}"
            return self.services.not_held(event.environment, event.release_id, lock.get("services", []))
        recorded = lock["superseded"].get(event.release_id)
        if recorded is None or recorded.get("by") != event.superseded_by:
            return f"{app}/{event.environment} records no supersession of {event.release_id} by {event.superseded_by}"
        return ""

    def record_durations(self, app: str, release_id: str, durations: Mapping[str, float]) -> None:
        record_durations(self.records, app, release_id, durations)

    # -- the version floor ----------------------------------------------------------
    @staticmethod
    def _below_floor(data: dict[str, Any], environment: str, release_id: str, version: str) -> dict[str, str] | None:
        floor = data["version_floor"]
        if environment != FLOOR_ENVIRONMENT or not floor.get("version") or floor.get("release_id") == release_id:
            return None
        if higher(version, floor["version"]):
            return None
        return {"by": floor["release_id"],
                "reason": f"version {version or '(none)'} is not higher than {floor['version']}, which release "
                          f"{floor['release_id']} already took to prod; versions only move forward there"}

    @staticmethod
    def _raise_floor(data: dict[str, Any], environment: str, release_id: str, version: str) -> None:
        floor = data["version_floor"]
        if environment == FLOOR_ENVIRONMENT and version and (not floor.get("version") or higher(version, floor["version"])):
            data["version_floor"] = {"version": version, "release_id": release_id}

    @staticmethod
    def _supersede(lock: dict[str, Any], release_id: str, why: dict[str, str]) -> None:
        lock["queue"] = [q for q in lock["queue"] if q["release_id"] != release_id]
        lock["superseded"][release_id] = why
        lock["superseded"] = dict(list(lock["superseded"].items())[-SUPERSEDED_KEPT:])

    # -- the services' locks ----------------------------------------------------------
    def _take_services(self, app: str, environment: str, release_id: str, services: list[str]) -> str:
        """The application lock is held: take the services' locks in order; grant when all are held."""
        waiting_for = self.services.take(app, environment, release_id, services)
        if waiting_for:
            log.info("release %s holds %s/%s and waits for service %s", release_id, app, environment, waiting_for)
            return "queued"
        self._granted(environment, release_id)
        return "granted"

    def _carry_on(self, app: str, environment: str, release_id: str) -> None:
        """A service lock was handed to ``release_id`` (of ``app``): it takes the rest of its locks."""
        lock = self.records.read(app)[0]["locks"].get(environment) or empty_lock()
        if lock["holder"] == release_id:
            self._take_services(app, environment, release_id, lock.get("services", []))

    # -- events -------------------------------------------------------------------------
    def _granted(self, environment: str, release_id: str) -> None:
        log.info("lock %s granted to %s", environment, release_id)
        self.publisher.publish(self.settings.events_topic, LockGranted("", release_id, environment))

    def _superseded(self, environment: str, release_id: str, why: dict[str, str]) -> None:
        log.info("release %s superseded by %s (%s)", release_id, why["by"], why.get("reason") or environment)
        self.publisher.publish(self.settings.events_topic,
                               Superseded("", release_id, environment, why["by"], why.get("reason", "")))
