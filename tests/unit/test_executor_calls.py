"""How API errors become our errors: retried, transient or permanent, with useful messages."""
from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from shared.domain.errors import ExecutorError, TransientError
from shared.adapters.executors.calls import ApiCaller, RetryPolicy, missing_permission

FAST = ApiCaller(RetryPolicy(initial_s=0.001, maximum_s=0.002, timeout_s=0.05))


@pytest.mark.parametrize("message, permission", [
    ("Permission 'run.jobs.run' denied on resource 'projects/p/locations/r/jobs/j'.", "run.jobs.run"),
    ("The caller does not have permission 'cloudbuild.builds.create'", "cloudbuild.builds.create"),
    ("Permission denied on resource project p.", ""),
    ("The caller does not have permission", ""),
])
def test_missing_permission_is_read_from_the_server_message(message, permission):
    assert missing_permission(message) == permission


def test_unavailable_is_retried_until_it_works():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise gexc.ServiceUnavailable("try again")
        return "ok"

    assert FAST.call("reading", flaky) == "ok" and len(calls) == 3


def test_unavailable_past_the_budget_is_transient():
    def down():
        raise gexc.DeadlineExceeded("slow")

    with pytest.raises(TransientError, match="release r1, stage s: reading: still failing after retries"):
        FAST.call("reading", down, release_id="r1", stage="s")


@pytest.mark.parametrize("error, kind, text", [
    (gexc.PermissionDenied("Permission 'run.services.update' denied"), ExecutorError,
     "missing permission run.services.update"),
    (gexc.PermissionDenied("The caller does not have permission"), ExecutorError, "permission denied"),
    (gexc.NotFound("Resource 'noesis2-migrate' of kind 'JOB' does not exist."), ExecutorError,
     "not found: Resource 'noesis2-migrate'"),
    (gexc.InvalidArgument("bad traffic"), ExecutorError, "InvalidArgument: bad traffic"),
    (gexc.Aborted("etag mismatch"), TransientError, "Aborted: etag mismatch"),
])
def test_permanent_and_transient_errors(error, kind, text):
    calls = []

    def fail():
        calls.append(1)
        raise error

    with pytest.raises(kind, match=text):
        FAST.call("doing", fail, stage="prod-deploy")
    assert len(calls) == 1  # only UNAVAILABLE / DEADLINE_EXCEEDED are retried at once
