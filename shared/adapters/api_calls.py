"""How executors call Google APIs: one retry policy and one translation of errors.

Every call goes through ``ApiCaller.call`` so that the rules hold everywhere:
UNAVAILABLE / DEADLINE_EXCEEDED are retried briefly (exponential backoff) and then
become TransientError (the event is redelivered later); PERMISSION_DENIED and
NOT_FOUND are permanent (ExecutorError) and say which permission or resource.

The retry wraps a whole step (e.g. "look for the build, else create it"), not a
single RPC, because CreateBuild and RunJob take no request id: after a DEADLINE_EXCEEDED
the create may have happened, and only the lookup in the next try can tell.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.domain.errors import ExecutorError, ResourceNotFound, TransientError

T = TypeVar("T")

RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)
# Worth redelivering the event for, but not worth retrying at once.
TRANSIENT = RETRYABLE + (gexc.Aborted, gexc.ResourceExhausted, gexc.InternalServerError)
PERMISSION = re.compile(r"[Pp]ermission[s]?\s+['\"‘]?([a-z][a-zA-Z0-9_]*(?:\.[a-zA-Z0-9_]+){2,})")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable API errors; tests shrink it to milliseconds."""

    initial_s: float = 0.25
    maximum_s: float = 2.0
    multiplier: float = 2.0
    timeout_s: float = 5.0
    call_timeout_s: float = 30.0  # per RPC

    def retry(self) -> gretry.Retry:
        return gretry.Retry(
            predicate=gretry.if_exception_type(*RETRYABLE),
            initial=self.initial_s,
            maximum=self.maximum_s,
            multiplier=self.multiplier,
            timeout=self.timeout_s,
        )


def missing_permission(message: str) -> str:
    """The permission a PERMISSION_DENIED message names ('run.jobs.run'), or ''."""
    match = PERMISSION.search(message or "")
    return match.group(1) if match else ""


def _server_message(exc: gexc.GoogleAPICallError) -> str:
    return str(exc.message or exc)


@dataclass(frozen=True)
class ApiCaller:
    policy: RetryPolicy = RetryPolicy()

    @property
    def timeout(self) -> float:
        return self.policy.call_timeout_s

    def call(self, what: str, fn: Callable[[], T], *, release_id: str | None = None, stage: str | None = None) -> T:
        """Run ``fn`` (one or more RPCs) with the retry policy; raise our errors, never Google's."""
        where = {"release_id": release_id, "stage": stage}
        try:
            return self.policy.retry()(fn)()
        except gexc.RetryError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise TransientError(f"{what}: still failing after retries: {cause}", **where) from None
        except gexc.PermissionDenied as exc:
            message = _server_message(exc)
            permission = missing_permission(message)
            named = f"missing permission {permission}" if permission else "permission denied"
            raise ExecutorError(f"{what}: {named} (server said: {message})", **where) from None
        except gexc.NotFound as exc:
            raise ResourceNotFound(f"{what}: not found: {_server_message(exc)}", **where) from None
        except TRANSIENT as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {_server_message(exc)}", **where) from None
        except gexc.GoogleAPICallError as exc:
            raise ExecutorError(f"{what}: {type(exc).__name__}: {_server_message(exc)}", **where) from None
