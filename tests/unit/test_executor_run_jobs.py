"""How an execution read back ends a job stage: the ``Completed`` condition decides (finding 10),
and the image tag of a version with build metadata (finding 13)."""
from __future__ import annotations

import datetime

import pytest
from google.cloud import run_v2

from shared.adapters.executors.run_jobs import finish_of_execution
from shared.adapters.executors.substitute import image_ref
from shared.app.config import Settings
from shared.domain.events import Outcome
from shared.domain.pipeline import parse_pipeline

State = run_v2.Condition.State
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def execution(completed: State | None, *, reconciling: bool = False, succeeded: int = 0, failed: int = 0):
    conditions = [run_v2.Condition(type_="Completed", state=completed, message="m")] if completed else []
    return run_v2.Execution(name="projects/p/locations/r/jobs/j/executions/j-1", reconciling=reconciling,
                            conditions=conditions, succeeded_count=succeeded, failed_count=failed,
                            start_time=NOW, completion_time=NOW + datetime.timedelta(seconds=5))


def test_counts_and_completion_time_alone_do_not_end_the_stage():
    # The API does not order completion_time against the counts or the condition.
    assert finish_of_execution(execution(State.CONDITION_PENDING, succeeded=1)) is None
    assert finish_of_execution(execution(State.CONDITION_SUCCEEDED, reconciling=True, succeeded=1)) is None
    assert finish_of_execution(execution(None, succeeded=1)) is None


@pytest.mark.parametrize("state, counts, outcome", [
    (State.CONDITION_SUCCEEDED, {"succeeded": 1}, Outcome.SUCCEEDED),
    (State.CONDITION_SUCCEEDED, {}, Outcome.SUCCEEDED),  # counts not yet filled in: the condition decides
    (State.CONDITION_FAILED, {"succeeded": 1}, Outcome.FAILED),
])
def test_the_completed_condition_decides(state, counts, outcome):
    finish = finish_of_execution(execution(state, **counts))
    assert finish is not None and finish.outcome is outcome and finish.result["duration_s"] == 5.0


def test_build_metadata_never_reaches_a_docker_tag():
    pipeline = parse_pipeline({"name": "app", "image": "app", "stages": [
        {"id": "s", "kind": "approval", "timeout": "1h", "params": {"approvers": ["a@example.com"]}}]})
    ref = image_ref(Settings(artifact_registry="europe-west3-docker.pkg.dev/p/r"), pipeline, "v1.2.3+build.5-abc1234")
    assert ref == "europe-west3-docker.pkg.dev/p/r/app:v1.2.3_build.5-abc1234"
