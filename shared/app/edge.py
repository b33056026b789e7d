"""Ack or retry, decided once, at the edge of every Pub/Sub-triggered function.

A push handler that returns acknowledges the message; one that raises makes Pub/Sub
deliver it again (with the subscription's backoff, up to its maximum delivery
attempts, then to the dead-letter topic, which ``drain_dead_letters`` empties into
the same dead-letter store). Which one happens is decided by the error's class, in
this one table (the README's "Ack or retry" table is this one in words); the first
row whose class matches wins:

===================  =============================  ==========================================
error                answer                         why
===================  =============================  ==========================================
MalformedEvent       ack, dead-lettered once        the input can never be processed: a retry
                     with the reason                would fail the same way for 24 h
TransientError       raise: redelivered             a dependency is briefly unavailable, or a
StaleWrite           raise: redelivered             write kept losing a race
ConfigError          raise: redelivered, logged as  a setting the operator must fix; nothing is
                     ERROR                          lost while it is wrong
DefinitionError      raise: redelivered, logged as  a pipeline definition the operator must fix
                     ERROR                          (same as a setting)
anything else        raise: redelivered, logged as  a bug; after the last attempt Pub/Sub's
                     ERROR with its traceback       dead-letter topic keeps it for a re-drive
===================  =============================  ==========================================
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from shared.domain.errors import ConfigError, DefinitionError, MalformedEvent, StaleWrite, TransientError
from shared.domain.wire import unwrap_push

if TYPE_CHECKING:
    from shared.app.dead_letters import DeadLetters

log = logging.getLogger("edge")
MAX_KEPT_ENVELOPE = 4096


@dataclass(frozen=True)
class Rule:
    error: type[BaseException]
    acknowledge: bool  # True: return (ack) after keeping a dead letter; False: raise for redelivery
    level: int
    meaning: str


ACK_OR_RETRY: tuple[Rule, ...] = (
    Rule(MalformedEvent, True, logging.WARNING, "malformed input: acknowledged, dead-lettered once with the reason"),
    Rule(TransientError, False, logging.WARNING, "transient: redelivered by Pub/Sub"),
    Rule(StaleWrite, False, logging.WARNING, "lost a write race too often: redelivered by Pub/Sub"),
    Rule(ConfigError, False, logging.ERROR,
         "a setting the operator must fix: redelivered until it is fixed, nothing is lost meanwhile"),
    Rule(DefinitionError, False, logging.ERROR,
         "a pipeline definition the operator must fix: redelivered until it is fixed, nothing is lost meanwhile"),
    Rule(Exception, False, logging.ERROR, "unexpected (a bug): redelivered; Pub/Sub's dead-letter topic keeps it last"),
)


def rule_for(error: BaseException) -> Rule:
    return next(rule for rule in ACK_OR_RETRY if isinstance(error, rule.error))


Handler = Callable[[str, Mapping[str, str], bytes], Any]


def deliver(event_id: str, envelope: Any, handle: Handler, dead_letters: Callable[[], "DeadLetters"],
            source: str) -> Any:
    """Unwrap one Pub/Sub push, hand it to ``handle``, and ack or raise by ``ACK_OR_RETRY``.

    ``dead_letters`` is called only when a letter is kept, so a function that never
    meets malformed input never wires the store."""
    attributes: dict[str, str] = {}
    data = repr(envelope)[:MAX_KEPT_ENVELOPE].encode()  # what is kept when not even the envelope parses
    try:
        attributes, data = unwrap_push(event_id, envelope)
        return handle(event_id, attributes, data)
    except Exception as exc:  # noqa: BLE001 - classified by the table, then acked or re-raised
        rule = rule_for(exc)
        if not rule.acknowledge:
            log.log(rule.level, "event %s (%s) NOT acknowledged, %s: %s", event_id, source, rule.meaning, exc,
                    exc_info=rule.error is Exception)
            raise
        log.log(rule.level, "event %s (%s) %s: %s", event_id, source, rule.meaning, exc)
        dead_letters().keep(event_id, str(exc), source, data, attributes)
        return None
