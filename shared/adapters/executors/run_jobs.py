"""Stages of kind ``job``: one Cloud Run job execution per stage run, of the release's image.

RunJob's overrides carry args and env, never an image (Cloud Run Admin API v2,
``RunJobRequest.Overrides.ContainerOverride``): an execution runs the image of the job's
template. So the executor first sets the template's image to the release's digest
(GetJob, UpdateJob, waiting for its operation), then runs the job. The two calls are not
atomic: another release may update the job in between. The execution records the template
it ran, so the stage checks that image and fails, naming both digests, when it is not the
release's; nothing of that execution is recorded as this release's. A release whose build
reported no digest runs the job as its template stands.

The stage-run id travels into the execution as env ``STAGE_RUN_ID`` (next to
``RELEASE_ID`` and ``RELEASE_TAG``). RunJob takes no request id, so a repeated start
first lists the job's executions and reuses the one carrying that id (after the same check).
Completion is observed by the sweeper through ``poll``.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.substitute import image_digest_of, release_image, substitute, variables_for
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.app.ports import StageFinish, StartResult
from shared.domain.stage_results import result_of
from shared.domain.state import StageState

RUN_ID_ENV = "STAGE_RUN_ID"
# How long to wait for UpdateJob's long-running operation (Cloud Run answers in seconds).
UPDATE_WAIT_S = 120.0


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


def execution_image(execution: Any, container: str = "") -> str:
    """The image the execution ran: its template's (named, else first) container's."""
    containers = list(execution.template.containers)
    chosen = next((c for c in containers if container and c.name == container), containers[0] if containers else None)
    return chosen.image if chosen is not None else ""


def image_mismatch(job: str, execution: str, ran: str, wanted: str, release_id: str) -> str:
    """Why the stage fails when the execution ran another image than the release's."""
    return (f"execution {execution.rsplit('/', 1)[-1]} of job {job.rsplit('/', 1)[-1]} ran image "
            f"{image_digest_of(ran) or ran}, not {image_digest_of(wanted) or wanted} that "
            f"{'release ' + release_id if release_id else 'the release'} built: "
            "another writer changed the job's image between UpdateJob and RunJob; replay the stage to run it again")


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
    if execution_image(execution):
        result["image"] = execution_image(execution)  # what ran, as the execution records it
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
        image = release_image(self.settings, pipeline, command)
        container = str(stage.params.get("container") or "")

        def checked(execution: Any, **extra: Any) -> dict[str, Any]:
            ran = execution_image(execution, container)
            if image and ran != image:
                raise ExecutorError(image_mismatch(request.name, execution.name, ran, image, command.release_id),
                                    release_id=command.release_id, stage=stage.id)
            return {"execution": execution.name, **({"image": ran} if image else {}), **extra}

        def find_or_run() -> dict[str, Any]:
            existing = self._find(request.name, command.stage_run_id)
            if existing is not None:
                return checked(existing, reused=True)
            if image:
                self._set_image(request.name, container, image)
            operation = self.jobs.run_job(request=request, retry=None, timeout=self.caller.timeout)
            execution = operation.metadata
            if execution is None or not execution.name:  # a server that sent no metadata
                execution = self._find(request.name, command.stage_run_id)
            if execution is None:
                raise ExecutorError(f"RunJob on {request.name} returned no execution")
            return checked(execution)

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
        if execution is None:
            return None
        wanted = result_of(StageKind.JOB, state.result).image  # recorded by start when the release has a digest
        ran = execution_image(execution, str(stage.params.get("container") or ""))
        if wanted and ran != wanted:
            job = job_name(self.settings, str(stage.params["job"]))
            return StageFinish(Outcome.FAILED, image_mismatch(job, execution.name, ran, wanted, ""), {})
        return finish_of_execution(execution)

    def _set_image(self, job: str, container: str, image: str) -> None:
        """Point the job's template at ``image`` (UpdateJob), and wait until Cloud Run took it."""
        current = self.jobs.get_job(name=job, retry=None, timeout=self.caller.timeout)
        containers = list(current.template.template.containers)
        target = next((c for c in containers if container and c.name == container), containers[0] if containers else None)
        if target is None:
            raise ExecutorError(f"job {job} has no container to run {image} in")
        if target.image == image:
            return
        target.image = image
        current.template.template.containers = containers
        operation = self.jobs.update_job(job=current, retry=None, timeout=self.caller.timeout)
        operation.result(timeout=UPDATE_WAIT_S)

    def _find(self, job: str, stage_run_id: str) -> Any | None:
        pager = self.executions.list_executions(parent=job, retry=None, timeout=self.caller.timeout)
        for execution in pager:
            if carries_run_id(execution, stage_run_id):
                return execution
        return None
