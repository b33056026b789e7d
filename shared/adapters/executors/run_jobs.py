"""Stages of kind ``job``: one Cloud Run job execution per stage run.

The stage-run id travels into the execution as env ``STAGE_RUN_ID`` (next to
``RELEASE_ID`` and ``RELEASE_TAG``). RunJob takes no request id, so a repeated start
first lists the job's executions and reuses the one carrying that id.
Completion is observed by the sweeper through ``poll``.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.substitute import substitute, variables_for
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.app.ports import StageFinish, StartResult
from shared.domain.stage_results import result_of
from shared.domain.state import StageState

RUN_ID_ENV = "STAGE_RUN_ID"


def secret_ref(reference: str) -> tuple[str, str]:
    """(secret, version) from ``name``, ``name:3`` or ``projects/p/secrets/name[/versions/3]``;
    the version defaults to ``latest``."""
    text = str(reference).strip()
    if text.startswith("projects/"):
        parts = text.split("/")
        secret = "/".join(parts[:4])
        version = parts[5] if len(parts) > 5 and parts[4] == "versions" else "latest"
        return secret, version
    secret, _, version = text.partition(":")
    return secret, version or "latest"


def job_env(params: Mapping[str, Any], command: StartStage) -> list[Any]:
    """Env of the execution: params.env, then our ids (they win), then secrets by reference.

    Secrets are passed as Secret Manager references, never as values, so they never
    pass through the orchestrator or its logs.
    """
    from google.cloud import run_v2

    plain: dict[str, str] = {str(k): str(v) for k, v in (params.get("env") or {}).items()}
    plain.update(
        {RUN_ID_ENV: command.stage_run_id, "RELEASE_ID": command.release_id,
         "RELEASE_TAG": str(command.inputs.get("tag") or "")}
    )
    env = [run_v2.EnvVar(name=k, value=v) for k, v in plain.items()]
    for name, reference in (params.get("secrets") or {}).items():
        if name in plain:
            raise ExecutorError(f"env {name} is set both as a value and as a secret")
        secret, version = secret_ref(reference)
        env.append(run_v2.EnvVar(
            name=str(name), value_source={"secret_key_ref": {"secret": secret, "version": version}},
        ))
    return env


def run_request(settings: Settings, pipeline: Pipeline, stage: Stage, command: StartStage):
    from google.cloud import run_v2

    params = substitute(stage.params, variables_for(settings, pipeline, command))
    override: dict[str, Any] = {"env": job_env(params, command)}
    if params.get("args"):
        override["args"] = [str(a) for a in params["args"]]
    if params.get("container"):
        override["name"] = str(params["container"])
    return run_v2.RunJobRequest(
        name=job_name(settings, str(params["job"])),
        overrides=run_v2.RunJobRequest.Overrides(container_overrides=[override]),
    )


def job_name(settings: Settings, job: str) -> str:
    return f"projects/{settings.project}/locations/{settings.region}/jobs/{job}"


def carries_run_id(execution: Any, stage_run_id: str) -> bool:
    return any(
        env.name == RUN_ID_ENV and env.value == stage_run_id
        for container in execution.template.containers
        for env in container.env
    )


def finish_of_execution(execution: Any) -> StageFinish | None:
    """None while it runs; the ``Completed`` condition decides how it ended.

    The Cloud Run Admin API v2 Execution resource: "reconciling: Indicates whether the resource's
    reconciliation is still in progress" and its conditions report "Completed" with state
    CONDITION_SUCCEEDED or CONDITION_FAILED once the execution ends
    (https://cloud.google.com/run/docs/reference/rest/v2/projects.locations.jobs.executions).
    Counts and ``completion_time`` are not ordered against each other, so they only describe.
    """
    from google.cloud import run_v2

    State = run_v2.Condition.State
    completed = next((c for c in execution.conditions if c.type_ == "Completed"), None)
    if execution.reconciling or completed is None or completed.state not in (
            State.CONDITION_SUCCEEDED, State.CONDITION_FAILED):
        return None
    result: dict[str, Any] = {
        "execution": execution.name,
        "succeeded_count": execution.succeeded_count,
        "failed_count": execution.failed_count,
        "cancelled_count": execution.cancelled_count,
    }
    if execution.log_uri:
        result["log_uri"] = execution.log_uri
    if execution.start_time and execution.completion_time:
        result["duration_s"] = round(execution.completion_time.timestamp() - execution.start_time.timestamp(), 3)
    if completed.state == State.CONDITION_SUCCEEDED:
        return StageFinish(Outcome.SUCCEEDED, "", result)
    return StageFinish(Outcome.FAILED, _failure_reason(execution), result)


def _failure_reason(execution: Any) -> str:
    from google.cloud import run_v2

    failed = run_v2.Condition.State.CONDITION_FAILED
    messages = [c.message or c.type_ for c in execution.conditions if c.state == failed]
    short = execution.name.rsplit("/", 1)[-1]
    counts = (f"{execution.failed_count} failed, {execution.succeeded_count} succeeded, "
              f"{execution.cancelled_count} cancelled")
    return f"execution {short} ended with {counts}" + (f": {'; '.join(messages)}" if messages else "")


class RunJobExecutor:
    def __init__(self, settings: Settings, jobs: Any, executions: Any, caller: ApiCaller | None = None):
        self.settings = settings
        self.jobs = jobs
        self.executions = executions
        self.caller = caller or ApiCaller()

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        request = run_request(self.settings, pipeline, stage, command)

        def find_or_run() -> dict[str, Any]:
            existing = self._find(request.name, command.stage_run_id)
            if existing is not None:
                return {"execution": existing.name, "reused": True}
            operation = self.jobs.run_job(request=request, retry=None, timeout=self.caller.timeout)
            execution = operation.metadata
            if execution is None or not execution.name:  # a server that sent no metadata
                execution = self._find(request.name, command.stage_run_id)
            if execution is None:
                raise ExecutorError(f"RunJob on {request.name} returned no execution")
            return {"execution": execution.name}

        handle = self.caller.call(
            f"running job {request.name} for {command.stage_run_id}", find_or_run,
            release_id=command.release_id, stage=stage.id,
        )
        return StartResult(handle=handle)

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        name = result_of(StageKind.JOB, state.result).execution

        def read():
            if name:
                return self.executions.get_execution(name=name, retry=None, timeout=self.caller.timeout)
            return self._find(job_name(self.settings, str(stage.params["job"])), state.stage_run_id)

        execution = self.caller.call(f"reading the execution of {state.stage_run_id}", read, stage=stage.id)
        return None if execution is None else finish_of_execution(execution)

    def _find(self, job: str, stage_run_id: str) -> Any | None:
        pager = self.executions.list_executions(parent=job, retry=None, timeout=self.caller.timeout)
        for execution in pager:
            if carries_run_id(execution, stage_run_id):
                return execution
        return None
