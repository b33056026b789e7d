"""``rollback``, an action of the operator function: traffic back by hand, guarded and recorded.

1. A reason is required. ``dry_run`` answers what would move (current split, target, its
   verdict) without moving: ``relctl rollback`` shows it and asks to confirm.
2. The target is chosen from the service's revision history (shared/domain/revision_history.py):
   only a revision that completed a release, unless ``force``; a no-op is refused (409).
3. Traffic moves (``Mover``: ``run_services.rollback`` / ``registry_rollback``); the call does
   not wait for the rollout and answers with its operation.
4. The move is recorded in the history (before and after as Cloud Run reported them, who,
   why, forced or not), and ``RolledBack`` is published for the release whose deploy stage
   last deployed that service (``deploying_release``); the gate records it on that stage and
   on the timeline and sends the notice, a finished release too. The dispatcher applies it
   only when the operator request it names was recorded.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from shared.app.operator import Caller, OperatorService
from shared.app.ports import Clock, EventPublisher, ReleaseStore, RevisionHistories
from shared.app.revision_log import record_manual
from shared.domain.errors import ConfigError, ExecutorError, RequestRefused, ResourceNotFound
from shared.domain.events import RolledBack
from shared.domain.pipeline import StageKind
from shared.domain.stage_results import DeployResult, results_of
from shared.domain.state import ReleaseState

LOOKBACK = 200  # recent releases searched for the one that deployed the service
Mover = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]  # (service, how) -> what moved


def _results(state: ReleaseState, stage_id: str) -> list[DeployResult]:
    # Read as a deploy's whatever the kind: only deploy and traffic stages record revisions and rollbacks.
    return results_of(StageKind.DEPLOY, state.stages[stage_id])


def deploying_release(states: Iterable[ReleaseState], service: str) -> tuple[ReleaseState, str] | None:
    """The newest release (and its deploy stage) that deployed ``service``."""
    for state in sorted(states, key=lambda s: s.created_at, reverse=True):
        for stage_id in state.stages:
            if any(t.service == service for result in _results(state, stage_id) for t in result.revisions):
                return state, stage_id
    return None


def register_rollback(service: OperatorService, store: ReleaseStore, publisher: EventPublisher, events_topic: str,
                      mover: Mover, histories: RevisionHistories, clock: Clock) -> OperatorService:
    def rollback(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        name = params.get("service")
        if not isinstance(name, str) or not name:
            raise RequestRefused(400, "params.service is required")
        how: dict[str, Any] = {k: params.get(k) for k in ("to_revision", "to_tag", "from_registry", "image")}
        if sum(bool(how[k]) for k in ("to_revision", "to_tag", "from_registry")) > 1:
            raise RequestRefused(400, "name one of to_revision, to_tag, from_registry")
        reason = params.get("reason") or ""
        if not isinstance(reason, str):
            raise RequestRefused(400, "params.reason must be text")
        if not reason.strip():
            raise RequestRefused(400, "a rollback needs a reason (recorded with it on the release)")
        how["to_revision"] = str(how["to_revision"] or "").rsplit("/", 1)[-1]
        how.update(history=histories.read(name), force=params.get("force") is True, reason=reason.strip(),
                   dry_run=params.get("dry_run") is True)
        try:
            moved = dict(mover(name, how))
        except ResourceNotFound as exc:  # no such service, revision or image tag
            raise RequestRefused(404, str(exc)) from None
        except ExecutorError as exc:  # refused by the history, no such revision: retrying will not help
            raise RequestRefused(409, str(exc)) from None
        except ConfigError as exc:  # a setting of the operator function that its deployer must fix
            raise RequestRefused(503, f"{exc} (a setting of the operator function)") from None
        if how["dry_run"]:
            return {**moved, "dry_run": True}
        recent = store.list_releases(LOOKBACK)
        found = deploying_release(recent, name)
        record_manual(histories, name, moved, by=caller.email, why=reason.strip()[:500],
                      request_id=caller.request_id, at=clock.now(), release_id=found[0].release_id if found else "")
        answer = {**moved, "recorded_on": "", "stage": ""}
        if found is not None:
            state, stage = found
            # A rollout still running is recorded as done only when the probes see it end.
            answer["message_id"] = publisher.publish(events_topic, RolledBack(
                "", state.release_id, stage, name, str(moved.get("from") or ""), str(moved.get("revision") or ""),
                caller.email, reason.strip()[:500], caller.request_id, str(moved.get("operation") or ""),
                landed=bool(moved.get("done"))))
            answer.update(recorded_on=state.release_id, stage=stage)
        return answer

    service.register("rollback", rollback)
    return service
