"""One release at a time per environment: the lock documents and their queue.

Policy: a release that wants an environment another release holds joins the
queue. When the holder gives the environment back, the NEWEST queued release gets
it and every older queued release is superseded: its changes are contained in the
newer commit, and deploying it after the newer one would roll staging or prod back.

Each lock is one Firestore document ``locks/{environment}``
``{holder, queue: [{release_id, created_at}], superseded: {release_id: by}}``,
changed by conditional writes (update-time precondition), like the releases.
The outcome reaches the releases as events (``lock.granted``,
``release.superseded``) published after the write; both operations are
idempotent, and a queued release asks again on every sweeper tick, so a grant
lost with a crashed process is sent again.
"""
from __future__ import annotations

import logging

from shared.app.config import Settings
from shared.domain.errors import StaleWrite, TransientError
from shared.app.ports import EventPublisher, LockDocuments

log = logging.getLogger(__name__)
SUPERSEDED_KEPT = 200
MAX_CONFLICT_RETRIES = 20


class EnvironmentLocks:
    def __init__(self, documents: LockDocuments, publisher: EventPublisher, settings: Settings):
        self.documents = documents
        self.publisher = publisher
        self.settings = settings

    def acquire(self, environment: str, release_id: str, created_at: float) -> str:
        """'granted', 'queued' or 'superseded'; the matching event is published."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.documents.read(environment)
            if release_id in data["superseded"]:
                self._superseded(environment, release_id, data["superseded"][release_id])
                return "superseded"
            if data["holder"] == release_id:
                self._granted(environment, release_id)  # asked again: the first grant may be lost
                return "granted"
            if data["holder"] == "":
                data["holder"] = release_id
                data["queue"] = [q for q in data["queue"] if q["release_id"] != release_id]
                outcome = "granted"
            elif all(q["release_id"] != release_id for q in data["queue"]):
                data["queue"].append({"release_id": release_id, "created_at": created_at})
                outcome = "queued"
            else:
                return "queued"  # already waiting: nothing to write
            try:
                self.documents.write(environment, data, token)
            except StaleWrite:
                continue
            if outcome == "granted":
                self._granted(environment, release_id)
            return outcome
        raise TransientError(f"lock {environment}: too many concurrent changes", release_id=release_id)

    def release(self, environment: str, release_id: str) -> str | None:
        """Give the environment back; returns the release that gets it next, if any."""
        for _ in range(MAX_CONFLICT_RETRIES):
            data, token = self.documents.read(environment)
            if data["holder"] != release_id:
                queue = [q for q in data["queue"] if q["release_id"] != release_id]
                if queue == data["queue"]:
                    return None  # not held, not queued: a repeated release, nothing to do
                data["queue"] = queue
                successor, older = None, []
            else:
                queue = sorted(data["queue"], key=lambda q: (q["created_at"], q["release_id"]))
                successor = queue[-1]["release_id"] if queue else None
                older = [q["release_id"] for q in queue[:-1]]
                data["holder"] = successor or ""
                data["queue"] = []
                data["superseded"].update({old: successor for old in older})
                data["superseded"] = dict(list(data["superseded"].items())[-SUPERSEDED_KEPT:])
            try:
                self.documents.write(environment, data, token)
            except StaleWrite:
                continue
            for old in older:
                self._superseded(environment, old, successor)
            if successor:
                self._granted(environment, successor)
            return successor
        raise TransientError(f"lock {environment}: too many concurrent changes", release_id=release_id)

    def _granted(self, environment: str, release_id: str) -> None:
        log.info("lock %s granted to %s", environment, release_id)
        self.publisher.publish(self.settings.events_topic,
                               {"type": "lock.granted", "release_id": release_id, "environment": environment})

    def _superseded(self, environment: str, release_id: str, by: str) -> None:
        log.info("release %s superseded by %s (queued for %s)", release_id, by, environment)
        self.publisher.publish(self.settings.events_topic, {
            "type": "release.superseded", "release_id": release_id, "environment": environment, "superseded_by": by})
