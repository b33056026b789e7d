"""``rollback``, an action of the operator function: traffic back by hand, recorded on a release.

``relctl rollback`` used to move traffic with the operator's own credentials and write
nothing anywhere. Now the operator function does it for a verified operator:

1. A target revision that a rollback of the gate moved traffic away from (it failed its
   checks) is refused unless ``force`` (``failed_revisions``).
2. Traffic moves (``Mover``: ``run_services.rollback`` / ``registry_rollback``).
3. ``RolledBack`` is published for the release whose deploy stage last deployed that
   service (``deploying_release``); the gate records it on that stage and on the timeline
   (who, when, from, to, why) and sends the notice by mail and chat, a finished release
   too. The dispatcher applies it only when the operator request it names was recorded.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from shared.app.operator import Caller, OperatorService
from shared.app.ports import EventPublisher, ReleaseStore
from shared.domain.errors import ConfigError, ExecutorError, RequestRefused, ResourceNotFound
from shared.domain.events import RolledBack
from shared.domain.pipeline import StageKind
from shared.domain.stage_results import DeployResult, results_of
from shared.domain.state import ReleaseState

LOOKBACK = 200  # recent releases searched for failed revisions and for the one that deployed the service
Mover = Callable[[str, Mapping[str, Any]], Mapping[str, Any]]  # (service, how) -> what moved


def _results(state: ReleaseState, stage_id: str) -> list[DeployResult]:
    # Read as a deploy's whatever the kind: only deploy and traffic stages record revisions and rollbacks.
    return results_of(StageKind.DEPLOY, state.stages[stage_id])


def failed_revisions(states: Iterable[ReleaseState]) -> dict[str, str]:
    """Revision -> why, for every revision the gate rolled back from (it failed a check).
    A rollback by hand says nothing about the revision it left."""
    failed: dict[str, str] = {}
    for state in states:
        for stage_id in state.stages:
            for result in _results(state, stage_id):
                for r in result.rolled_back:
                    if r.from_revision and not r.manual:
                        failed.setdefault(r.from_revision, f"release {state.release_id}: {r.why or 'rolled back'}")
    return failed


def deploying_release(states: Iterable[ReleaseState], service: str) -> tuple[ReleaseState, str] | None:
    """The newest release (and its deploy stage) that deployed ``service``."""
    for state in sorted(states, key=lambda s: s.created_at, reverse=True):
        for stage_id in state.stages:
            if any(t.service == service for result in _results(state, stage_id) for t in result.revisions):
                return state, stage_id
    return None


def register_rollback(service: OperatorService, store: ReleaseStore, publisher: EventPublisher, events_topic: str,
                      mover: Mover) -> OperatorService:
    def rollback(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        name = params.get("service")
        if not isinstance(name, str) or not name:
            raise RequestRefused(400, "params.service is required")
        how = {k: params.get(k) for k in ("to_revision", "to_tag", "from_registry", "image")}
        if sum(bool(how[k]) for k in ("to_revision", "to_tag", "from_registry")) > 1:
            raise RequestRefused(400, "name one of to_revision, to_tag, from_registry")
        reason = params.get("reason") or ""
        if not isinstance(reason, str):
            raise RequestRefused(400, "params.reason must be text")
        recent = store.list_releases(LOOKBACK)
        target = str(how["to_revision"] or "").rsplit("/", 1)[-1]
        failed = failed_revisions(recent).get(target) if target else None
        if failed and params.get("force") is not True:
            raise RequestRefused(409, f"revision {target} failed its checks ({failed}); "
                                      "pass --force to send all traffic to it anyway")
        try:
            moved = dict(mover(name, how))
        except ResourceNotFound as exc:  # no such service, revision or image tag
            raise RequestRefused(404, str(exc)) from None
        except ExecutorError as exc:  # nothing to go back to, not ready: retrying will not help
            raise RequestRefused(409, str(exc)) from None
        except ConfigError as exc:  # a setting of the operator function that its deployer must fix
            raise RequestRefused(503, f"{exc} (a setting of the operator function)") from None
        found = deploying_release(recent, name)
        answer = {**moved, "recorded_on": "", "stage": ""}
        if found is not None:
            state, stage = found
            answer["message_id"] = publisher.publish(events_topic, RolledBack(
                "", state.release_id, stage, name, str(moved.get("from") or ""), str(moved.get("revision") or ""),
                caller.email, reason.strip()[:500], caller.request_id))
            answer.update(recorded_on=state.release_id, stage=stage)
        return answer

    service.register("rollback", rollback)
    return service
