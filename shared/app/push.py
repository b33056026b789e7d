"""The push trigger: verify a GitHub webhook, pick the releases it starts, create them once.

Answers (status, body). GitHub waits 10 s for an answer, so the handler only
verifies, writes the release and publishes ``release.started``; the stages run
from the dispatcher.
"""
from __future__ import annotations

import hashlib
import functools
import hmac
import secrets
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import semver

from shared.domain.identity import People
from shared.app.config import Settings
from shared.domain.errors import WebhookRejected
from shared.domain.events import ReleaseStarted
from shared.domain.pipeline import Pipeline
from shared.app.locks import higher
from shared.app.ports import AppRecords, Clock, EventPublisher, ReleaseStore
from shared.app.repositories import RepositoryMap
from shared.domain.state import new_release, release_id_for

log = logging.getLogger(__name__)

# Branch pushes carry their version as a commit trailer, kept up before the merge (seed step 1).
VERSION_TRAILER = re.compile(r"^Release-Version:\s*v?(\S+)\s*$", re.MULTILINE | re.IGNORECASE)
MAX_BODY = 5 * 1024 * 1024


def signature_for(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """GitHub's X-Hub-Signature-256: HMAC-SHA256 of the raw body, compared in constant time."""
    if not secret or not header:
        return False
    return hmac.compare_digest(signature_for(secret, body).encode(), header.strip().encode())


@dataclass(frozen=True)
class Push:
    repo: str
    ref: str
    commit: str
    pushed_by: str
    version: str
    changes: Mapping[str, Any] = field(default_factory=dict)  # see ReleaseState.changes
    aliases: tuple[str, ...] = ()  # every name the push gives for the pusher (address, login)


MAX_LISTED_COMMITS = 20


def listed_commit(sha: Any, message: Any, author: Any) -> dict[str, str]:
    """One commit as the approval page lists it: id, first line of the message, author; bounded."""
    text = str(message or "").strip()
    return {"id": str(sha or "")[:40], "message": text.splitlines()[0][:200] if text else "",
            "author": str(author or "")[:100]}


def push_changes(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The push's own list of commits and GitHub's compare link, bounded (1 MiB per release document)."""
    commits = [c for c in payload.get("commits") or [] if isinstance(c, Mapping)]
    listed = [listed_commit(c.get("id"), c.get("message"),
                            (c.get("author") or {}).get("name") or (c.get("author") or {}).get("email"))
              for c in commits[-MAX_LISTED_COMMITS:]]
    compare = str(payload.get("compare") or "")
    return {"commits": listed, "total": len(commits),
            "compare_url": compare if compare.startswith("https://") else "",
            "before": str(payload.get("before") or "")[:40]}


def resolve_version(payload: Mapping[str, Any], ref: str, release_branch: str) -> str:
    """The semver of a push: the tag name for ``v*`` tags, else the head commit's trailer."""
    if ref.startswith("refs/tags/"):
        candidate, source = ref[len("refs/tags/"):].removeprefix("v"), f"tag {ref}"
    else:
        message = (payload.get("head_commit") or {}).get("message") or ""
        match = VERSION_TRAILER.search(message)
        if not match:
            raise WebhookRejected(
                422,
                f"push to {ref}: no semver version: not a v* tag, and the head commit message has no "
                f"'Release-Version: X.Y.Z' trailer",
            )
        candidate, source = match.group(1), "the Release-Version trailer"
    try:
        semver.Version.parse(candidate)
    except ValueError:
        raise WebhookRejected(422, f"push to {ref}: {source} gives {candidate!r}, which is not semver X.Y.Z") from None
    return candidate


def parse_push(payload: Any, release_branch: str) -> Push | None:
    """The push, or None when it is for a ref that does not release."""
    if not isinstance(payload, dict):
        raise WebhookRejected(400, "payload must be a JSON object")
    ref = payload.get("ref")
    commit = payload.get("after")
    repo = (payload.get("repository") or {}).get("full_name")
    if not isinstance(ref, str) or not isinstance(commit, str) or not isinstance(repo, str):
        raise WebhookRejected(400, "push payload needs ref, after and repository.full_name")
    if payload.get("deleted") or set(commit) == {"0"}:
        return None
    is_branch = ref == f"refs/heads/{release_branch}"
    is_tag = ref.startswith("refs/tags/v")
    if not (is_branch or is_tag):
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{7,40}", commit):
        raise WebhookRejected(400, f"push to {ref}: 'after' is not a commit sha")
    pusher = payload.get("pusher") or {}
    sender = payload.get("sender") or {}
    pushed_by = pusher.get("email") or pusher.get("name") or sender.get("login") or "unknown"
    # Every name the push gives for who pushed, most specific first: the first one that
    # resolves to a person (shared/domain/identity.py) decides self-approval.
    aliases = tuple(str(v) for v in (pusher.get("email"), pusher.get("name"), sender.get("login")) if v)
    return Push(repo, ref, commit.lower(), pushed_by, resolve_version(payload, ref, release_branch),
                push_changes(payload), aliases)


@dataclass
class PushService:
    store: ReleaseStore
    publisher: EventPublisher
    pipelines: RepositoryMap  # which pipeline each repository releases (shared/app/repositories.py)
    clock: Clock
    settings: Settings
    # apps/{app}: its version floor (the highest version that entered prod) is the one
    # read the version check costs, however many releases the repository has.
    apps: AppRecords

    @functools.cached_property
    def people(self) -> People:
        return People.parse(self.settings.people)

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return self._handle(headers, body)
        except WebhookRejected as exc:
            log.info("webhook refused (%s): %s", exc.status, exc)
            return exc.status, {"error": str(exc)}

    def _handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if len(body) > MAX_BODY:
            raise WebhookRejected(413, "payload too large")
        secret = self.settings.require("webhook_secret")
        if not verify_signature(secret, body, headers.get("X-Hub-Signature-256")):
            raise WebhookRejected(401, "missing or wrong X-Hub-Signature-256")
        event_type = headers.get("X-GitHub-Event", "")
        delivery = headers.get("X-GitHub-Delivery", "")
        if event_type == "ping":
            return 200, {"status": "pong"}
        if event_type != "push":
            return 202, {"status": "ignored", "reason": f"event type {event_type!r} does not start releases"}
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WebhookRejected(400, f"body is not JSON: {exc}") from None
        push = parse_push(payload, self.settings.release_branch)
        if push is None:
            return 202, {"status": "ignored", "reason": f"ref {payload.get('ref')!r} is not {self.settings.release_branch} or a v* tag"}
        return self._start_release(push, delivery)

    def _start_release(self, push: Push, delivery: str) -> tuple[int, dict[str, Any]]:
        pipeline = self.pipelines.pipeline_for(push.repo)
        release_id = release_id_for(push.repo, push.commit)
        existing = self.store.get(release_id)
        if existing is None:
            self._refuse_old_version(push, pipeline)
            self.store.save_pipeline(pipeline)
            state = new_release(
                pipeline, repo=push.repo, ref=push.ref, commit=push.commit,
                version=push.version, pushed_by=push.pushed_by, now=self.clock.now(),
                pusher=self.people.pusher(push.aliases),
                run_key=secrets.token_hex(32),
            )
            state.changes = dict(push.changes)
            created = self.store.create(state)
        else:
            state, created = existing[0], False
        if delivery:
            self.store.claim_delivery(delivery, {"release_id": release_id, "ref": push.ref, "at": self.clock.now()})
        if created or not any(s.attempt for s in state.stages.values()):
            # Also re-published for an existing release that never started: the first
            # delivery may have died between the create and the publish.
            self.publisher.publish(self.settings.events_topic, ReleaseStarted("", release_id))
        body = {"status": "created" if created else "exists", "release_id": release_id, "tag": state.tag}
        return (201 if created else 200), body

    def _refuse_old_version(self, push: Push, pipeline: Pipeline) -> None:
        """A version not above the floor would be superseded at the prod lock (shared/app/locks.py):
        refuse it now, while the author can still bump it before the merge."""
        floor = self.apps.read(pipeline.name)[0].version_floor
        last = floor.version
        if last and not higher(push.version, last):
            raise WebhookRejected(
                409,
                f"version {push.version} of {push.commit[:7]} is not higher than the last released "
                f"version {last} (release {floor.release_id or '?'} took it to prod); bump the version "
                "before the merge",
            )
