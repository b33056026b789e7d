"""Operator actions of the operator's day, registered on the one operator function.

``approve`` / ``reject``: an approver decides with their verified Google identity
(``relctl approve``), under every rule of the approval link (ApprovalService.decide_as).
``dead-letters`` / ``redrive``: list the dead-letter store, re-drive one letter
(shared/app/dead_letters.py; the gate decides on it like on the original delivery).
``cancel``: publishes CancelRequested carrying the request id; the gate stops the release
for good (shared/domain/gate.py ``on_cancel``) once the dispatcher found the request recorded.
``skip-bake``: an approver of the release ends a running bake early (shared/domain/bake_skip.py):
refused here at once when the rules say no, then BakeSkipRequested, which the gate records
and answers with the one probe whose verdict ends the bake (or fails the stage).
The operator function has already checked the ID token and the operator list and
recorded the request; a handler only answers for its own rules.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from shared.app.approvals import ApprovalRefused, ApprovalService
from shared.app.dead_letters import DeadLetterNotFound, DeadLetters
from shared.app.locks import AlreadyFrozen, EnvironmentLocks
from shared.app.operator import Caller, OperatorService
from shared.app.ports import EventPublisher, ReleaseStore
from shared.domain.errors import PipelineError, RequestRefused
from shared.domain.bake_skip import skip_refusal
from shared.domain.events import BakeSkipRequested, CancelRequested
from shared.domain.ids import valid_release_id


def _release_id(params: Mapping[str, Any]) -> str:
    release_id = params.get("release_id")
    if not isinstance(release_id, str) or not valid_release_id(release_id):
        raise RequestRefused(400, f"params.release_id {release_id!r} is not a release id")
    return release_id


def register_approval_actions(service: OperatorService, approvals: ApprovalService) -> OperatorService:
    def decide(approve: bool):
        def handler(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
            release_id = _release_id(params)
            reason = params.get("reason") or ""
            if not isinstance(reason, str):
                raise RequestRefused(400, "params.reason must be text")
            try:
                return approvals.decide_as(caller.email, release_id, approve, reason.strip(),
                                           via=f"relctl (operator request {caller.request_id})")
            except ApprovalRefused as exc:
                raise RequestRefused(exc.status, str(exc)) from None
        return handler

    service.register("approve", decide(True))
    service.register("reject", decide(False))
    return service


def register_cancel(service: OperatorService, store: ReleaseStore, publisher: EventPublisher,
                    events_topic: str) -> OperatorService:
    def cancel(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        release_id = _release_id(params)
        reason = params.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise RequestRefused(400, "params.reason is required (recorded with the cancel)")
        got = store.get(release_id)
        if got is None:
            raise RequestRefused(404, f"no release {release_id}")
        if got[0].status.terminal:
            raise RequestRefused(409, f"release {release_id} is {got[0].status.value}; nothing to cancel")
        message_id = publisher.publish(events_topic, CancelRequested(
            "", release_id, caller.email, reason.strip()[:500], caller.request_id))
        return {"release_id": release_id, "message_id": message_id}

    service.register("cancel", cancel)
    return service


def register_skip_bake(service: OperatorService, store: ReleaseStore, publisher: EventPublisher,
                       events_topic: str) -> OperatorService:
    def skip_bake(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        release_id = _release_id(params)
        stage, reason = params.get("stage"), params.get("reason") or ""
        if not isinstance(stage, str) or not stage:
            raise RequestRefused(400, "params.stage is required (the check whose bake ends)")
        if not isinstance(reason, str):
            raise RequestRefused(400, "params.reason must be text")
        got = store.get(release_id)
        if got is None:
            raise RequestRefused(404, f"no release {release_id}")
        state = got[0]
        status, why = skip_refusal(store.load_pipeline(state.pipeline_digest), state, stage, caller.email)
        if status:
            raise RequestRefused(status, why)
        message_id = publisher.publish(events_topic, BakeSkipRequested(
            "", release_id, stage, caller.email, reason.strip()[:500], caller.request_id))
        return {"release_id": release_id, "stage": stage, "message_id": message_id}

    service.register("skip-bake", skip_bake)
    return service


def register_dead_letter_actions(service: OperatorService, letters: DeadLetters) -> OperatorService:
    def listing(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        limit = params.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise RequestRefused(400, "params.limit must be an integer from 1 to 500")
        return {"letters": [{"id": d.id, "reason": d.reason, "source": d.source, "received_at": d.received_at,
                             "type": d.original_attributes().get("type", ""),
                             "release_id": d.original_attributes().get("release_id", ""),
                             "redriven_as": d.redriven_as, "redriven_at": d.redriven_at}
                            for d in letters.list(limit)]}

    def redrive(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        letter_id = params.get("letter_id")
        if not isinstance(letter_id, str) or not letter_id:
            raise RequestRefused(400, "params.letter_id is required")
        try:
            return {"letter_id": letter_id, "message_id": letters.redrive(letter_id)}
        except DeadLetterNotFound as exc:
            raise RequestRefused(404, str(exc)) from None
        except PipelineError as exc:
            raise RequestRefused(409, str(exc)) from None

    service.register("dead-letters", listing)
    service.register("redrive", redrive)
    return service


def register_freeze(service: OperatorService, locks: EnvironmentLocks, default_app: str,
                    known_apps: Callable[[], Iterable[str]] = tuple) -> OperatorService:
    """``freeze`` / ``unfreeze`` prod for an application (default: the deployed pipeline's).
    ``known_apps``: the applications there are (pipeline names); any other is refused, since a
    freeze of a misspelt name would hold nothing back and say it did."""

    def app_of(params: Mapping[str, Any]) -> str:
        app = params.get("app") or default_app
        if not isinstance(app, str) or not app:
            raise RequestRefused(400, "params.app must name an application (a pipeline name)")
        known = sorted({default_app, *known_apps()} - {""})
        if app not in known:
            raise RequestRefused(404, f"no application {app!r} (applications: {', '.join(known)})")
        return app

    def freeze(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        reason = params.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise RequestRefused(400, "params.reason is required (recorded with the freeze)")
        app = app_of(params)
        try:
            locks.set_freeze(app, {"by": caller.email, "at": caller.at, "reason": reason.strip()[:500]},
                            replace_existing=False)
        except AlreadyFrozen as exc:
            raise RequestRefused(409, f"{exc} (since {iso_utc(exc.freeze.at)}); relctl unfreeze first, "
                                      "then freeze with the new reason") from None
        return {"app": app, "frozen": True}

    def unfreeze(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        app = app_of(params)
        return {"app": app, "frozen": False,
                "granted_to": locks.set_freeze(app, None, by=caller.email, at=caller.at) or ""}

    service.register("freeze", freeze)
    service.register("unfreeze", unfreeze)
    return service


def iso_utc(at: Any) -> str:
    if not isinstance(at, (int, float)):
        return "?"
    return datetime.fromtimestamp(float(at), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
