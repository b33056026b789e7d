"""A release's state: what the gate reads and writes, as plain serialisable data.

The whole state of one release lives in one Firestore document, so one
conditional write moves it from one consistent state to the next. Times are
epoch seconds (UTC) because the gate compares them and JSON carries them as-is.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from shared.domain.errors import ConfigError
from shared.domain.identity import People
from shared.domain.pipeline import Pipeline

# The release document's layout: 1 = no ``schema`` field (as written until 2026-11-30), 2 = the
# same plus ``schema``. ``from_dict`` reads every older one (``upgrade_release_document``), so a
# release in flight survives a deploy of newer code; a newer one is refused (see there).
RELEASE_SCHEMA = 2
# Bounded so the document stays small; older ids are long past redelivery.
APPLIED_EVENTS_KEPT = 400
# What else grows with replays is capped too (Firestore refuses a document over 1 MiB; a flaky
# stage replayed ~200 times used to reach it): the newest of each are kept, the rest counted.
REPLAYS_KEPT = 50
HISTORY_KEPT = 10  # finished attempts per stage, with their results
NONCES_KEPT = 100  # used approval nonces; older links name older attempts and are stale anyway


class ReleaseStatus(str, Enum):
    RUNNING = "running"
    QUEUED = "queued"  # waiting for the lock of an environment another release holds
    AWAITING_APPROVAL = "awaiting_approval"
    STOPPED = "stopped"  # a stage failed; only a replay of a stage can resume it
    SUCCEEDED = "succeeded"  # terminal
    SUPERSEDED = "superseded"  # terminal: a newer release took over
    CANCELLED = "cancelled"  # terminal: an operator stopped it (relctl cancel); prod kept what served before

    @property
    def terminal(self) -> bool:
        return self in (ReleaseStatus.SUCCEEDED, ReleaseStatus.SUPERSEDED, ReleaseStatus.CANCELLED)


class StageStatus(str, Enum):
    PENDING = "pending"
    QUEUED = "queued"  # next to run, once the release holds its environment's lock
    RUNNING = "running"
    WAITING = "waiting"  # an approval waiting for a human
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # an optional stage nobody asked for


@dataclass
class Attempt:
    """One finished run of a stage, kept when a replay starts the next one."""

    attempt: int
    stage_run_id: str
    status: str
    started_at: float | None
    finished_at: float | None
    reason: str
    result: dict[str, Any]


@dataclass
class StageState:
    status: StageStatus = StageStatus.PENDING
    attempt: int = 0
    stage_run_id: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    history: list[Attempt] = field(default_factory=list)  # the newest HISTORY_KEPT finished attempts

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 3)  # to the millisecond: the clock's float noise is not a fact


@dataclass
class ReleaseState:
    release_id: str
    repo: str
    ref: str
    commit: str
    version: str
    tag: str
    pushed_by: str  # as the push named them (shown)
    pipeline_name: str
    pipeline_digest: str
    created_at: float
    status: ReleaseStatus = ReleaseStatus.RUNNING
    stopped_at_stage: str = ""
    reason: str = ""
    updated_at: float = 0.0
    stages: dict[str, StageState] = field(default_factory=dict)
    # The person the push was matched to (normalised address; shared/domain/identity.py), "" when it
    # could not be: self-approval is then not ruled out and approval fails closed.
    pusher: str = ""
    # Random per release, made by the push trigger: keys the per-run secrets in stage-run ids
    # (events.run_secret). Never shown; only this document holds it.
    run_key: str = field(default="", repr=False)
    chaos_requested_by: str = ""
    locks_held: list[str] = field(default_factory=list)  # environments this release holds
    waiting_for: str = ""  # the environment whose lock the release is queued for
    superseded_by: str = ""
    approval: dict[str, Any] = field(default_factory=dict)  # the accepted decision
    # What the push brought: {"commits": [{id, message, author}], "total", "compare_url", "before"} (at most
    # MAX_LISTED_COMMITS commits, first lines only), shown on the approval page. When the approval is
    # requested, GitHub's compare since prod's commit replaces it ("source": "github compare"), or
    # "note" says why it could not (shared/app/compare.py).
    changes: dict[str, Any] = field(default_factory=dict)
    # Every human decision and operator action, in order: {at, kind, by, stage, attempt, reason, ...}
    # (approved/rejected, approval expired, replay/resend accepted or refused, chaos, cancel). The last
    # TIMELINE_KEPT stay: bounded for Firestore's 1 MiB per document.
    timeline: list[dict[str, Any]] = field(default_factory=list)
    used_nonces: list[str] = field(default_factory=list)
    # The newest REPLAYS_KEPT replay requests and the gate's answer: {replay_id, stage, requested_by,
    # reason, at, accepted}.
    replays: list[dict[str, Any]] = field(default_factory=list)
    replays_refused: int = 0  # every refused replay, also those no longer in ``replays``
    applied_events: list[str] = field(default_factory=list)
    # Commands of transitions not yet carried out: [{event_id, commands, lease_until}].
    # See shared/app/dispatcher.py for why they live in the release document.
    outbox: list[dict[str, Any]] = field(default_factory=list)
    # When the sweeper must look at the release again, and when it may be deleted
    # (epoch seconds; see shared/domain/wake.py). None: never.
    wake_at: float | None = None
    expire_at: float | None = None
    # The stall already announced (shared/domain/stall.py); written by the sweeper alone, with a
    # field write that leaves ``updated_at`` (what a stall is measured from) as it was.
    stall_announced_for: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schema"] = RELEASE_SCHEMA
        data["status"] = self.status.value
        for stage in data["stages"].values():
            stage["status"] = stage["status"].value if isinstance(stage["status"], Enum) else stage["status"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReleaseState":
        data = upgrade_release_document(data)
        stages = {}
        for stage_id, raw in (data.pop("stages", None) or {}).items():
            raw = dict(raw)
            raw["status"] = StageStatus(raw["status"])
            raw["history"] = [Attempt(**a) for a in raw.get("history", [])]
            stages[stage_id] = StageState(**raw)
        data["status"] = ReleaseStatus(data["status"])
        known = cls.__dataclass_fields__
        return cls(stages=stages, **{k: v for k, v in data.items() if k in known})


def upgrade_release_document(data: dict[str, Any]) -> dict[str, Any]:
    """A stored release document in this code's layout. Each step upgrades one schema to the
    next; fields added since have defaults. A document written by newer code is a ConfigError:
    the operator must deploy that code (the event is redelivered meanwhile, nothing is lost)."""
    data = dict(data)
    version = data.pop("schema", 1)
    if not isinstance(version, int) or version > RELEASE_SCHEMA:
        raise ConfigError(f"release {data.get('release_id', '?')} is stored with schema {version!r}; this code "
                          f"reads up to {RELEASE_SCHEMA}: deploy the code that wrote it")
    # 1 -> 2: the layout is unchanged; only the marker is new.
    return data


def release_id_for(repo: str, commit: str) -> str:
    """One release per repo and commit: the id is derived, so creating it twice collides."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")[-40:] or "repo"
    return f"{slug}-{commit[:12].lower()}"


def new_release(
    pipeline: Pipeline, *, repo: str, ref: str, commit: str, version: str, pushed_by: str, now: float,
    pusher: str | None = None, run_key: str = "",
) -> ReleaseState:
    return ReleaseState(
        release_id=release_id_for(repo, commit),
        repo=repo,
        ref=ref,
        commit=commit,
        version=version,
        tag=f"v{version}-{commit[:7]}",
        pushed_by=pushed_by,
        pusher=People().resolve(pushed_by) or "" if pusher is None else pusher,
        run_key=run_key,
        pipeline_name=pipeline.name,
        pipeline_digest=pipeline.digest,
        created_at=now,
        updated_at=now,
        stages={stage.id: StageState() for stage in pipeline.stages},
        wake_at=now + 90.0,  # = wake.SAFETY_NET_S: a release whose release.started got lost is looked at
    )
