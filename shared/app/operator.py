"""The one authenticated operator function: who asks, may they, run the action, record it.

Operator requests (replay, chaos, and whatever else registers here) used to be events
anyone allowed to publish on ``pipeline-events`` could send with any ``requested_by``.
Now they come through this HTTP function only:

1. ``Authorization: Bearer <Google ID token>`` is verified (signature against the
   issuer's certificates, audience = this function, expiry, issuer) by a
   ``TokenVerifier`` (shared/adapters/id_tokens.py, google-auth).
2. The token's verified e-mail is normalised (shared/domain/identity.py) and must be on
   the operator list (``RELEASE_OPERATORS``).
3. The request is recorded create-only in ``operator_requests/{request_id}`` (who,
   when, action, release, stage), BEFORE anything is published.
4. The action's handler runs. Handlers that publish an event put the request id on it;
   the dispatcher applies such an event only when it matches the recorded request
   (``unconfirmed_request``), the way approval events must match a recorded decision.

Actions register by name: ``register(name, handler)``; a handler is
``handler(caller, params) -> result`` and raises RequestRefused to answer 4xx.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shared.app.config import Settings
from shared.app.ports import Clock, EventPublisher, OperatorRequestLog, ReleaseStore, TokenVerifier
from shared.domain.errors import RequestRefused, TransientError
from shared.domain.events import BakeSkipRequested, CancelRequested, ChaosRequested, Event, RolledBack, StageReplay
from shared.domain.identity import People, normalise
from shared.domain.ids import valid_release_id

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Caller:
    """A verified operator and the request being handled for them."""

    email: str  # normalised; what ``requested_by`` records
    subject: str  # the token's ``sub``: stable even when the address changes
    request_id: str
    at: float


Handler = Callable[[Caller, Mapping[str, Any]], Mapping[str, Any]]


class OperatorService:
    def __init__(self, verifier: TokenVerifier, requests: OperatorRequestLog, clock: Clock, *,
                 operators: frozenset[str], people: People | None = None):
        self.verifier = verifier
        self.requests = requests
        self.clock = clock
        self.operators = frozenset(normalise(o) for o in operators if normalise(o))
        self.people = people or People()
        self.actions: dict[str, Handler] = {}

    @classmethod
    def from_settings(cls, settings: Settings, verifier: TokenVerifier, requests: OperatorRequestLog,
                      clock: Clock) -> "OperatorService":
        return cls(verifier, requests, clock, operators=frozenset(settings.operators.replace(";", ",").split(",")),
                   people=People.parse(settings.people))

    def register(self, name: str, handler: Handler) -> None:
        if name in self.actions:
            raise ValueError(f"operator action {name!r} is registered twice")
        self.actions[name] = handler

    # -- the HTTP request ----------------------------------------------------------
    def handle(self, method: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            return 200, self._handle(method, headers, body)
        except RequestRefused as exc:
            log.warning("operator request refused (%s): %s", exc.status, exc)
            return exc.status, {"error": str(exc)}
        except TransientError as exc:
            log.warning("operator request failed for now: %s", exc)
            return 503, {"error": f"{exc}; try again"}

    def _handle(self, method: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        if method != "POST":
            raise RequestRefused(405, "only POST; the body is {\"action\": ..., \"params\": {...}}")
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestRefused(401, "an ID token is required (Authorization: Bearer <token>)")
        email, subject = self.identify(self.verifier.verify(token.strip()))
        if email not in self.operators:
            raise RequestRefused(403, f"{email} is not an operator (RELEASE_OPERATORS)")
        action, params, request_id = self.parse(body)
        handler = self.actions.get(action)
        if handler is None:
            raise RequestRefused(400, f"unknown action {action!r} (one of {', '.join(sorted(self.actions))})")
        caller = Caller(email, subject=subject, request_id=request_id, at=self.clock.now())
        self.remember(caller, action, params)
        log.info("operator %s: %s %s", email, action, request_id)
        result = dict(handler(caller, params))
        return {"action": action, "request_id": request_id, "requested_by": email, **result}

    def identify(self, claims: Mapping[str, Any]) -> tuple[str, str]:
        """The verified address (normalised and mapped to a person) and the token's subject."""
        email = claims.get("email")
        if not isinstance(email, str) or not email or claims.get("email_verified") is not True:
            raise RequestRefused(403, "the ID token carries no verified e-mail address")
        return self.people.resolve(email) or normalise(email), str(claims.get("sub", ""))

    @staticmethod
    def parse(body: bytes) -> tuple[str, dict[str, Any], str]:
        if len(body) > MAX_BODY:
            raise RequestRefused(413, f"request body over {MAX_BODY} bytes")
        try:
            data = json.loads(body.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestRefused(400, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            raise RequestRefused(400, 'body must be {"action": "...", "params": {...}}')
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise RequestRefused(400, "params must be an object")
        request_id = data.get("request_id") or uuid.uuid4().hex
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            raise RequestRefused(400, "request_id: letters, digits, '.', '_', '-' (max 100)")
        return data["action"], params, request_id

    def remember(self, caller: Caller, action: str, params: Mapping[str, Any]) -> None:
        """Record the request before acting; a repeated id must repeat the same request."""
        record = {"action": action, "requested_by": caller.email, "subject": caller.subject, "at": caller.at,
                  "release_id": str(params.get("release_id", "")), "stage": str(params.get("stage", "")),
                  "reason": str(params.get("reason", ""))[:500], "service": str(params.get("service", ""))}
        if self.requests.record(caller.request_id, record):
            return
        before = self.requests.get(caller.request_id) or {}
        same = all(before.get(k) == record[k] for k in ("action", "requested_by", "release_id", "stage"))
        if not same:
            raise RequestRefused(409, f"request id {caller.request_id} was used for another request")


# -- the dispatcher's check ----------------------------------------------------------
OPERATOR_EVENTS = {StageReplay: "replay", ChaosRequested: "chaos", CancelRequested: "cancel",
                   BakeSkipRequested: "skip-bake", RolledBack: "rollback"}


def request_id_of(event: Event) -> str:
    return event.replay_id if isinstance(event, StageReplay) else getattr(event, "request_id", "")


def unconfirmed_request(requests: OperatorRequestLog, event: Event) -> str:
    """Why an operator event is not backed by a request recorded by the operator function ("" when it is)."""
    action = OPERATOR_EVENTS.get(type(event))
    if action is None:
        return ""
    request_id = request_id_of(event)
    record = requests.get(request_id) if request_id and REQUEST_ID.match(request_id) else None
    if record is None:
        return f"no operator request {request_id!r} was recorded (send it with relctl, through the operator function)"
    expected = {"action": action, "release_id": event.release_id, "requested_by": event.requested_by}
    if isinstance(event, (StageReplay, BakeSkipRequested)):
        expected["stage"] = event.stage
    if isinstance(event, RolledBack):
        # A rollback names a service; the operator function found the release that deployed it.
        expected = {"action": action, "requested_by": event.requested_by, "service": event.service}
    wrong = [k for k, v in expected.items() if record.get(k) != v]
    if wrong:
        return f"operator request {request_id} does not match the event ({', '.join(wrong)})"
    return ""


# -- the actions of this module -------------------------------------------------------
def _release(store: ReleaseStore, params: Mapping[str, Any]):
    release_id = params.get("release_id")
    if not isinstance(release_id, str) or not valid_release_id(release_id):
        raise RequestRefused(400, f"params.release_id {release_id!r} is not a release id")
    got = store.get(release_id)
    if got is None:
        raise RequestRefused(404, f"no release {release_id}")
    return got[0]


def register_release_actions(service: OperatorService, store: ReleaseStore, publisher: EventPublisher,
                             settings: Settings) -> OperatorService:
    """``replay`` and ``chaos``: publish the event the gate decides on, carrying the request id."""

    def replay(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        state = _release(store, params)
        stage, reason = params.get("stage"), params.get("reason")
        if not isinstance(stage, str) or not stage:
            raise RequestRefused(400, "params.stage is required")
        if not isinstance(reason, str) or not reason.strip():
            raise RequestRefused(400, "params.reason is required (recorded with the replay)")
        pipeline = store.load_pipeline(state.pipeline_digest)
        if not pipeline.has_stage(stage):
            raise RequestRefused(404, f"release {state.release_id} has no stage {stage!r}")
        if state.status.terminal:
            # The gate refuses it too (and changes nothing): say so now, not after a wait for an answer
            # that never comes. A finished release is not resumed; a new push starts the next one.
            by = f" by {state.superseded_by}" if state.superseded_by else ""
            raise RequestRefused(409, f"release {state.release_id} is {state.status.value}{by}; a finished release "
                                      "is not replayed (push a new commit to release again)")
        message_id = publisher.publish(settings.events_topic, StageReplay(
            "", state.release_id, stage, caller.request_id, caller.email, reason))
        return {"replay_id": caller.request_id, "release_id": state.release_id, "stage": stage,
                "message_id": message_id}

    def chaos(caller: Caller, params: Mapping[str, Any]) -> Mapping[str, Any]:
        state = _release(store, params)
        message_id = publisher.publish(settings.events_topic, ChaosRequested(
            "", state.release_id, caller.email, caller.request_id))
        return {"release_id": state.release_id, "message_id": message_id}

    service.register("replay", replay)
    service.register("chaos", chaos)
    return service
