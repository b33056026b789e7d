"""One revision history per Cloud Run service: which release made each revision, how it ended,
and every traffic move with what served before and after. Pure: no client, no clock.

The history is the source of truth rollbacks choose from. The rule (``rollback_target``):
a rollback, automatic or by hand, goes only to a revision that COMPLETED a release (its
release succeeded with it serving); any other target needs ``force`` and a reason. A move
that would change nothing is refused as such. A deploy starts from the template of the
last completed revision (``last_completed``), never from a canary that failed.

Read API (for rollbacks, notes, "what runs where", GitHub statuses):
``ServiceHistory.revision(name)``, ``.completed()``, ``.last_completed(excluding=...)``,
``.serving()`` (the split the last recorded move left), ``.moves``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Iterable, Mapping

from shared.domain.errors import ExecutorError

MOVES_KEPT = 200  # Firestore: one document per service; 200 moves stay far below 1 MiB
REVISIONS_KEPT = 300


class Verdict(str, Enum):
    """How a revision ended. PENDING: its release has not decided yet."""

    PENDING = "pending"
    COMPLETED = "completed"  # its release succeeded with it serving: a rollback may go here
    FAILED = "failed"  # failed a canary (a check of its release failed while it served)
    ROLLED_BACK = "rolled_back"  # served, then its release was cancelled or rolled back by hand
    NEVER_SERVED = "never_served"  # its release ended before it took traffic


VERDICT_TEXT = {Verdict.PENDING: "release in flight", Verdict.COMPLETED: "completed a release",
                Verdict.FAILED: "failed a canary", Verdict.ROLLED_BACK: "rolled back",
                Verdict.NEVER_SERVED: "never served"}


class RollbackRefused(ExecutorError):
    """A rollback the history says no to: a no-op, or a target that never completed a release."""


Split = tuple[tuple[str, int], ...]  # ((revision, percent), ...) as Cloud Run reports it, sorted by revision


def split_of(pairs: Iterable[tuple[str, int]]) -> Split:
    """The normal form: one entry per revision (percents added), zero shares dropped, sorted."""
    total: dict[str, int] = {}
    for revision, percent in pairs:
        if revision and int(percent) > 0:
            total[revision] = total.get(revision, 0) + int(percent)
    return tuple(sorted(total.items()))


@dataclass(frozen=True)
class RevisionRecord:
    name: str  # short revision name
    release_id: str = ""
    version: str = ""
    commit: str = ""
    image: str = ""
    verdict: Verdict = Verdict.PENDING
    created_at: float = 0.0
    why: str = ""  # what decided the verdict


@dataclass(frozen=True)
class TrafficMove:
    """One change of a service's traffic, with the split before and after as Cloud Run reported it."""

    move_id: str  # deterministic (stage run, operation, operator request): a repeated record is one move
    at: float
    kind: str  # "deploy", "traffic", "rollback" (the gate's), "manual" (relctl rollback)
    before: Split
    after: Split
    by: str = ""
    why: str = ""
    release_id: str = ""
    forced: bool = False  # an operator sent traffic to a revision that never completed a release
    operation: str = ""


@dataclass(frozen=True)
class ServiceHistory:
    service: str
    revisions: tuple[RevisionRecord, ...] = ()  # oldest first
    moves: tuple[TrafficMove, ...] = ()  # oldest first

    # -- read API ---------------------------------------------------------------------
    def revision(self, name: str) -> RevisionRecord | None:
        return next((r for r in self.revisions if r.name == name), None)

    def completed(self) -> tuple[RevisionRecord, ...]:
        return tuple(r for r in self.revisions if r.verdict is Verdict.COMPLETED)

    def last_completed(self, excluding: Iterable[str] = ()) -> RevisionRecord | None:
        skip = set(excluding)
        return next((r for r in reversed(self.completed()) if r.name not in skip), None)

    def serving(self) -> Split:
        """What the last recorded move left serving (() before any)."""
        return self.moves[-1].after if self.moves else ()

    def forced_in_effect(self) -> bool:
        """The split now serving was put there by an operator's forced move."""
        return bool(self.moves) and self.moves[-1].forced

    # -- changes (each returns a new history) ------------------------------------------
    def with_revision(self, record: RevisionRecord) -> "ServiceHistory":
        """Adds the revision, or fills what was unknown of one already recorded (its verdict stays)."""
        known = self.revision(record.name)
        if known is None:
            return replace(self, revisions=(*self.revisions, record)[-REVISIONS_KEPT:])
        merged = replace(known, **{k: getattr(record, k) for k in ("release_id", "version", "commit", "image")
                                   if not getattr(known, k) and getattr(record, k)})
        return self._replace_revision(merged)

    def with_verdict(self, name: str, verdict: Verdict, why: str = "") -> "ServiceHistory":
        """A verdict only moves on from PENDING, except that a completed revision stays completed
        (a later hand rollback away from it says nothing about it)."""
        known = self.revision(name) or RevisionRecord(name)
        if known.verdict is verdict or known.verdict is Verdict.COMPLETED:
            return self if self.revision(name) else self.with_revision(known)
        if known.verdict is not Verdict.PENDING and verdict is not Verdict.COMPLETED:
            return self if self.revision(name) else self.with_revision(known)
        updated = replace(known, verdict=verdict, why=why or known.why)
        return self._replace_revision(updated) if self.revision(name) else self.with_revision(updated)

    def with_move(self, move: TrafficMove) -> "ServiceHistory":
        if any(m.move_id == move.move_id for m in self.moves):
            return self  # the same move recorded again (a recovered batch): once
        return replace(self, moves=(*self.moves, move)[-MOVES_KEPT:])

    def _replace_revision(self, record: RevisionRecord) -> "ServiceHistory":
        return replace(self, revisions=tuple(record if r.name == record.name else r for r in self.revisions))


@dataclass(frozen=True)
class RollbackChoice:
    revision: str
    forced: bool  # the target never completed a release: the operator forced it


def rollback_target(history: ServiceHistory, serving: Split, to_revision: str = "", *, force: bool = False,
                    reason: str = "") -> RollbackChoice:
    """Where a rollback sends 100 % of the traffic, or RollbackRefused saying why not.

    Without a target: the newest revision that completed a release and is not the only one
    serving now. With one: it must have completed a release, unless ``force`` with a reason.
    Precedence: a no-op (the target already serves 100 %) > unknown target > not completed.
    """
    service = history.service
    only = serving[0][0] if len(serving) == 1 else ""
    if not to_revision:
        chosen = history.last_completed(excluding=[only] if only else [])
        if chosen is None:
            raise RollbackRefused(f"{service} has no revision that completed a release to roll back to"
                                  + (f" other than {only}, which serves 100 % now" if only else ""))
        to_revision = chosen.name
    if only == to_revision:
        raise RollbackRefused(f"{service} already sends 100 % of its traffic to {to_revision}; nothing to roll back")
    record = history.revision(to_revision)
    if record is not None and record.verdict is Verdict.COMPLETED:
        return RollbackChoice(to_revision, forced=False)
    what = VERDICT_TEXT[record.verdict] if record else "not made by any release this orchestrator recorded"
    if not force:
        raise RollbackRefused(f"revision {to_revision} of {service} never completed a release ({what}); "
                              "pass --force with a --reason to send all traffic to it anyway")
    if not reason.strip():
        raise RollbackRefused(f"a forced rollback of {service} to {to_revision} ({what}) needs a reason")
    return RollbackChoice(to_revision, forced=True)


def automatic_target(history: ServiceHistory, serving: Split, served_before: str) -> RollbackChoice:
    """Where the gate's rollback after a failed check (or a cancel) sends the traffic: back to what
    served before the release, unless the history knows that revision never completed a release (then
    the last that did). A revision the history does not know predates it: going back there beats
    leaving a failed canary in prod. Nothing to go back to is RollbackRefused."""
    record = history.revision(served_before) if served_before else None
    if served_before and (record is None or record.verdict is Verdict.COMPLETED):
        return RollbackChoice(served_before, forced=False)
    return rollback_target(history, serving)


# -- stored form ----------------------------------------------------------------------
def _split_to_list(split: Split) -> list[dict[str, Any]]:
    return [{"revision": r, "percent": p} for r, p in split]


def _split_from_list(items: Any) -> Split:
    return split_of((str(i.get("revision", "")), int(i.get("percent", 0))) for i in items or [])


def history_to_dict(history: ServiceHistory) -> dict[str, Any]:
    return {
        "service": history.service,
        "revisions": [{**r.__dict__, "verdict": r.verdict.value} for r in history.revisions],
        "moves": [{**m.__dict__, "before": _split_to_list(m.before), "after": _split_to_list(m.after)}
                  for m in history.moves],
    }


def history_from_dict(data: Mapping[str, Any], service: str = "") -> ServiceHistory:
    revisions = tuple(RevisionRecord(**{**r, "verdict": Verdict(r.get("verdict", "pending"))})
                      for r in data.get("revisions") or [])
    moves = tuple(TrafficMove(**{**m, "before": _split_from_list(m.get("before")),
                                 "after": _split_from_list(m.get("after"))}) for m in data.get("moves") or [])
    return ServiceHistory(str(data.get("service") or service), revisions, moves)
