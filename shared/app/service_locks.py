"""Locks per Cloud Run service and environment, shared by every application that deploys it.

An application's own lock (``apps/{app}``, shared/app/locks.py) keeps two releases of one
application apart. Two applications (two pipeline files) that deploy the same Cloud Run
service must not change it at once either, so a release that holds its application's lock
also takes one lock per service its pipeline deploys or shifts traffic on in that
environment (``Pipeline.services_in``), each in a document ``service_locks/{service}``::

    {"locks": {env: {"holder": release_id, "app": app, "queue": [{"release_id", "app"}]}}}

All-or-nothing without a deadlock: the grant (``lock.granted``) is published only when the
release holds its application lock AND every service lock; the locks are taken in one
fixed order (the application's first, then the services sorted by name) and a release
waits in the queue of the first one it cannot have, keeping those before it. Since every
release asks in the same order, none can wait for a lock while holding one that comes
later, so no cycle can form. Between applications a service queue is first come, first
served: nobody is superseded by another application's release (supersession stays within
one application, in its own record). Each change is one conditional write, like the rest.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from shared.app.ports import ServiceLockRecords
from shared.domain.errors import StaleWrite, TransientError

MAX_CONFLICT_RETRIES = 20
T = TypeVar("T")


def service_record(doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record from its stored document (None: never written)."""
    return {"locks": {}, **(doc or {})}


def _lock(data: dict[str, Any], environment: str) -> dict[str, Any]:
    return data["locks"].setdefault(environment, {"holder": "", "app": "", "queue": []})


class ServiceLocks:
    def __init__(self, records: ServiceLockRecords):
        self.records = records

    def take(self, app: str, environment: str, release_id: str, services: Iterable[str]) -> str:
        """Take every service lock in order; "" when all are held, else the service waited for."""
        for service in sorted(set(services)):
            if not self._take_one(app, environment, release_id, service):
                return service
        return ""

    def _take_one(self, app: str, environment: str, release_id: str, service: str) -> bool:
        def take(lock: dict[str, Any]) -> tuple[bool, bool]:
            queue = lock["queue"]
            if lock["holder"] == release_id:
                return False, True
            first_waiting = not queue or queue[0]["release_id"] == release_id
            if lock["holder"] == "" and first_waiting:
                lock.update(holder=release_id, app=app, queue=[q for q in queue if q["release_id"] != release_id])
                return True, True
            if all(q["release_id"] != release_id for q in queue):
                queue.append({"release_id": release_id, "app": app})
                return True, False
            return False, False  # already waiting: nothing to write

        return self._change(service, environment, release_id, take)

    def give_back(self, environment: str, release_id: str, services: Iterable[str]) -> list[tuple[str, str]]:
        """Give back (or stop waiting for) each service; returns (release, app) of every release
        that got one of them next, to carry on with its own remaining locks."""
        successors: list[tuple[str, str]] = []
        for service in sorted(set(services), reverse=True):
            successor = self._give_back_one(environment, release_id, service)
            if successor:
                successors.append(successor)
        return successors

    def _give_back_one(self, environment: str, release_id: str, service: str) -> tuple[str, str] | None:
        def give_back(lock: dict[str, Any]) -> tuple[bool, tuple[str, str] | None]:
            if lock["holder"] == release_id:
                nxt = lock["queue"].pop(0) if lock["queue"] else None
                lock.update(holder=nxt["release_id"] if nxt else "", app=nxt["app"] if nxt else "")
                return True, (nxt["release_id"], nxt["app"]) if nxt else None
            if any(q["release_id"] == release_id for q in lock["queue"]):
                lock["queue"] = [q for q in lock["queue"] if q["release_id"] != release_id]
                return True, None
            return False, None  # neither held nor waited for: a repeated give-back

        return self._change(service, environment, release_id, give_back)

    def _change(self, service: str, environment: str, release_id: str,
                change: Callable[[dict[str, Any]], tuple[bool, T]]) -> T:
        """Read the service's record, let ``change`` edit its lock for ``environment`` (answering
        whether to write, and the result), write it conditionally; again on a concurrent change."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.records.read(service)
            write, result = change(_lock(data, environment))
            if not write:
                return result
            try:
                self.records.write(service, data, token)
            except StaleWrite:
                continue
            return result
        raise TransientError(f"service lock {service}/{environment}: too many concurrent changes", release_id=release_id)

    def not_held(self, environment: str, release_id: str, services: Iterable[str]) -> str:
        """Why ``release_id`` does not hold every one of ``services`` ("" when it does)."""
        for service in sorted(set(services)):
            holder = _lock(self.records.read(service)[0], environment)["holder"]
            if holder != release_id:
                return f"service {service}/{environment} is held by {holder or 'nobody'}, not {release_id}"
        return ""
