"""google.cloud.run.v2 Jobs and Executions.

RunJob applies the overrides to a copy of the job's task template, so the
execution records exactly what ran (image, args, env including STAGE_RUN_ID) and a
caller can find its execution by listing. An image with code here (images.py: a
local image, or one a build pushed) runs its command as a process in that code;
others follow the outcome rule matching the job name or STAGE_RUN_ID. A job whose
template names an Artifact Registry image the registry does not hold is not ready:
its create or update operation fails and RunJob refuses it.
"""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
from google.cloud import run_v2
from google.longrunning.operations_pb2 import Operation

from local.standin.common import ApiError, OperationStore, OutcomeRules, StandInConfig, clone, now, short_id
from local.standin.images import ImageNotFound, locate
from local.standin.log_files import LogFiles
from local.standin.processes import Supervisor, child_env

JOBS = "google.cloud.run.v2.Jobs"
EXECUTIONS = "google.cloud.run.v2.Executions"
Condition = run_v2.Condition
State = Condition.State
DEFAULT_TASK_TIMEOUT = timedelta(minutes=10)


def ready_condition(kind: str = "Ready") -> Condition:
    return Condition(type_=kind, state=State.CONDITION_SUCCEEDED, last_transition_time=now())


class JobsService:
    def __init__(self, config: StandInConfig, operations: OperationStore, outcomes: OutcomeRules,
                 supervisor: Supervisor, logs: LogFiles, images=None) -> None:
        self._cfg = config
        self._images = images  # the ArtifactRegistryService: which images exist, and their code
        self._logs = logs
        self._ops = operations
        self._outcomes = outcomes
        self._supervisor = supervisor
        self._jobs: dict[str, run_v2.Job] = {}
        self._executions: dict[str, run_v2.Execution] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.RLock()

    def register(self, registry) -> None:
        registry.add(JOBS, "CreateJob", self.create_job, run_v2.CreateJobRequest, Operation)
        registry.add(JOBS, "GetJob", self.get_job, run_v2.GetJobRequest, run_v2.Job)
        registry.add(JOBS, "UpdateJob", self.update_job, run_v2.UpdateJobRequest, Operation)
        registry.add(JOBS, "ListJobs", self.list_jobs, run_v2.ListJobsRequest, run_v2.ListJobsResponse)
        registry.add(JOBS, "RunJob", self.run_job, run_v2.RunJobRequest, Operation)
        registry.add(EXECUTIONS, "GetExecution", self.get_execution, run_v2.GetExecutionRequest, run_v2.Execution)
        registry.add(EXECUTIONS, "ListExecutions", self.list_executions, run_v2.ListExecutionsRequest,
                     run_v2.ListExecutionsResponse)
        registry.add(EXECUTIONS, "CancelExecution", self.cancel_execution, run_v2.CancelExecutionRequest,
                     Operation)

    def executions(self) -> list[run_v2.Execution]:
        with self._lock:
            return [clone(e) for e in self._executions.values()]

    def shutdown(self) -> None:
        """Release hanging executions so their threads end with the stand-in."""
        with self._lock:
            for event in self._cancel.values():
                event.set()

    # -- jobs ------------------------------------------------------------------------
    def create_job(self, request: run_v2.CreateJobRequest) -> Operation:
        name = f"{request.parent}/jobs/{request.job_id}"
        with self._lock:
            if name in self._jobs:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Resource '{request.job_id}' already exists.")
            job = clone(request.job)
            job.name = name
            job.uid = str(uuid.uuid4())
            job.generation = job.observed_generation = 1
            job.create_time = job.update_time = now()
            job.etag = short_id(12)
            self._jobs[name] = job
            return self._settle(job)

    def update_job(self, request: run_v2.UpdateJobRequest) -> Operation:
        with self._lock:
            old = self._jobs.get(request.job.name)
            if old is None:
                if not request.allow_missing:
                    raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.job.name))
                parent, _, job_id = request.job.name.rpartition("/jobs/")
                return self.create_job(run_v2.CreateJobRequest(parent=parent, job=request.job, job_id=job_id))
            job = clone(request.job)
            for kept in ("uid", "create_time", "execution_count", "latest_created_execution"):
                setattr(job, kept, getattr(old, kept))
            job.generation = job.observed_generation = old.generation + 1
            job.update_time = now()
            job.etag = short_id(12)
            self._jobs[job.name] = job
            return self._settle(job)

    def _settle(self, job: run_v2.Job) -> Operation:
        """The job's terminal condition and its operation: failed when its image is missing
        (images.py cites what Cloud Run says), ready otherwise."""
        try:
            for container in job.template.template.containers:
                locate(container.image, self._cfg.local_images, self._cfg.workspace, self._images)
        except ImageNotFound as missing:
            job.terminal_condition = Condition(type_="Ready", state=State.CONDITION_FAILED, message=str(missing),
                                               reason=Condition.CommonReason.CONTAINER_MISSING,
                                               last_transition_time=now())
            op = self._ops.create(job)
            self._ops.finish(op.name, metadata=job, error=(grpc.StatusCode.FAILED_PRECONDITION, str(missing)))
            return self._ops.get(op.name)
        job.terminal_condition = ready_condition()
        return self._ops.create(job, done=True, response=job)

    def get_job(self, request: run_v2.GetJobRequest) -> run_v2.Job:
        with self._lock:
            if request.name not in self._jobs:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name))
            return clone(self._jobs[request.name])

    def list_jobs(self, request: run_v2.ListJobsRequest) -> run_v2.ListJobsResponse:
        with self._lock:
            jobs = [clone(j) for n, j in self._jobs.items() if n.startswith(request.parent + "/jobs/")]
        return run_v2.ListJobsResponse(jobs=jobs)

    def run_job(self, request: run_v2.RunJobRequest) -> Operation:
        with self._lock:
            job = self._jobs.get(request.name)
            if job is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name))
            if job.terminal_condition.state == State.CONDITION_FAILED:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"Job '{job.name.rsplit('/', 1)[-1]}' is not "
                               f"ready: {job.terminal_condition.message}")
            execution = self._new_execution(job, request.overrides)
            self._executions[execution.name] = execution
            self._cancel[execution.name] = threading.Event()
            job.execution_count += 1
            job.latest_created_execution = run_v2.ExecutionReference(
                name=execution.name, create_time=execution.create_time,
                completion_status=run_v2.ExecutionReference.CompletionStatus.EXECUTION_RUNNING,
            )
            op = self._ops.create(execution)
        threading.Thread(target=self._run, args=(execution.name, op.name), daemon=True,
                         name=f"exec-{execution.name.rsplit('/', 1)[-1]}").start()
        return op

    def _new_execution(self, job: run_v2.Job, overrides: run_v2.RunJobRequest.Overrides) -> run_v2.Execution:
        job_id = job.name.rsplit("/", 1)[-1]
        template = clone(job.template.template)
        for override in overrides.container_overrides:
            container = next((c for c in template.containers if c.name == override.name), None)
            if container is None and not override.name and template.containers:
                container = template.containers[0]
            if container is None:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"no container named {override.name!r} in {job.name}")
            if override.clear_args or override.args:
                container.args = list(override.args)
            merged = {e.name: e for e in container.env}
            merged.update({e.name: e for e in override.env})
            container.env = list(merged.values())
        if overrides.timeout:
            template.timeout = overrides.timeout
        task_count = overrides.task_count or job.template.task_count or 1
        created = now()
        execution_id = f"{job_id}-{short_id(5)}"
        return run_v2.Execution(
            name=f"{job.name}/executions/{execution_id}", uid=str(uuid.uuid4()), generation=1,
            labels=dict(job.labels) | {"run.googleapis.com/job": job_id}, create_time=created, job=job_id,
            parallelism=job.template.parallelism, task_count=task_count, template=template, reconciling=True,
            conditions=[Condition(type_="Completed", state=State.CONDITION_PENDING, last_transition_time=created)],
            # GCP: a Cloud Console link; here the execution's own log file, served (log_files.py)
            log_uri=self._logs.url("executions", execution_id), etag=short_id(12),
        )

    # -- executions ------------------------------------------------------------------
    def get_execution(self, request: run_v2.GetExecutionRequest) -> run_v2.Execution:
        with self._lock:
            if request.name not in self._executions:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name, "EXECUTION"))
            return clone(self._executions[request.name])

    def list_executions(self, request: run_v2.ListExecutionsRequest) -> run_v2.ListExecutionsResponse:
        prefix = request.parent
        if prefix.endswith("/jobs/-"):
            prefix = prefix[: -len("-")]
        elif prefix not in self._jobs:
            raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(prefix))
        with self._lock:
            found = [clone(e) for n, e in self._executions.items() if n.startswith(prefix)]
        found.reverse()  # newest first
        start = int(request.page_token or 0)
        size = request.page_size or 100
        token = str(start + size) if start + size < len(found) else ""
        return run_v2.ListExecutionsResponse(executions=found[start:start + size], next_page_token=token)

    def cancel_execution(self, request: run_v2.CancelExecutionRequest) -> Operation:
        with self._lock:
            execution = self._executions.get(request.name)
            if execution is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, _missing(request.name, "EXECUTION"))
            self._cancel[request.name].set()
            return self._ops.create(execution, done=True, response=execution)

    def _run(self, name: str, op_name: str) -> None:
        with self._lock:
            execution = self._executions[name]
            execution.start_time = now()
            execution.running_count = execution.task_count
            snapshot = clone(execution)
            self._ops.update_metadata(op_name, snapshot)
        cancel = self._cancel[name]
        container = snapshot.template.containers[0] if snapshot.template.containers else run_v2.Container()
        env = {e.name: e.value for e in container.env}
        try:
            code, missing = locate(container.image, self._cfg.local_images, self._cfg.workspace, self._images).root, ""
        except ImageNotFound as gone:  # deleted since the job was updated
            code, missing = None, str(gone)
        if missing:
            succeeded, message, reason = False, missing, None
        elif code is not None:
            succeeded, message, reason = self._run_tasks(snapshot, container, env, cancel, code)
        else:
            rule = self._outcomes.find("job", [snapshot.job, name, env.get("STAGE_RUN_ID", "")])
            if rule is None:
                succeeded, message, reason = False, (
                    f"stand-in cannot run image {container.image}; no outcome set for job {snapshot.job}"), None
            elif rule.outcome == "HANG":
                cancel.wait()
                succeeded, message, reason = False, "The execution was cancelled.", "CANCELLED"
            else:
                succeeded = rule.outcome == "SUCCESS"
                message = rule.detail or ("Execution completed successfully." if succeeded else
                                          f"Task {snapshot.job}-task0 failed (outcome set by test).")
                reason = None if succeeded else "NON_ZERO_EXIT_CODE"
        if cancel.is_set():
            succeeded, message, reason = False, "The execution was cancelled.", "CANCELLED"
        self._complete(name, op_name, succeeded, message, reason)

    def _run_tasks(self, execution: run_v2.Execution, container: run_v2.Container, env: dict[str, str],
                   cancel: threading.Event, code: Path) -> tuple[bool, str, str | None]:
        argv = list(container.command) + list(container.args)
        if not argv:
            return False, f"container of {execution.job} has neither command nor args", "NON_ZERO_EXIT_CODE"
        timeout = execution.template.timeout or DEFAULT_TASK_TIMEOUT
        execution_id = execution.name.rsplit("/", 1)[-1]
        for index in range(execution.task_count):
            task_env = env | {"CLOUD_RUN_JOB": execution.job, "CLOUD_RUN_EXECUTION": execution_id,
                              "CLOUD_RUN_TASK_INDEX": str(index), "CLOUD_RUN_TASK_COUNT": str(execution.task_count)}
            if code != self._cfg.workspace:  # an image's code: it imports its own modules, not ours
                task_env["PYTHONPATH"] = str(code)
            result = self._supervisor.run(
                argv, cwd=code / (container.working_dir or ""), env=child_env(task_env),
                log_path=self._logs.path("executions", execution_id),
                timeout_s=timeout.total_seconds(), cancel=cancel,
            )
            if result.cancelled:
                return False, "The execution was cancelled.", "CANCELLED"
            if result.timed_out:
                return False, f"Task {execution_id}-task{index} timed out.", "NON_ZERO_EXIT_CODE"
            if result.exit_code != 0:
                tail = result.tail.strip()[-500:]
                return False, (f"Task {execution_id}-task{index} failed with message: The container exited with "
                               f"an error (exit code {result.exit_code})." + (f" Output tail: {tail}" if tail else "")
                               ), "NON_ZERO_EXIT_CODE"
        return True, "Execution completed successfully.", None

    def _complete(self, name: str, op_name: str, succeeded: bool, message: str, reason: str | None) -> None:
        with self._lock:
            execution = self._executions[name]
            execution.completion_time = now()
            execution.running_count = 0
            execution.reconciling = False
            if succeeded:
                execution.succeeded_count = execution.task_count
            elif reason == "CANCELLED":
                execution.cancelled_count = execution.task_count
            else:
                execution.failed_count = 1
                execution.succeeded_count = 0
            completed = Condition(type_="Completed", message=message, last_transition_time=execution.completion_time,
                                  state=State.CONDITION_SUCCEEDED if succeeded else State.CONDITION_FAILED)
            if reason:
                completed.execution_reason = Condition.ExecutionReason[reason]
            execution.conditions = [ready_condition("ResourcesAvailable"), ready_condition("Started"), completed]
            Status = run_v2.ExecutionReference.CompletionStatus
            job = self._jobs.get(name.rsplit("/executions/", 1)[0])
            if job is not None and job.latest_created_execution.name == name:
                job.latest_created_execution.completion_time = execution.completion_time
                job.latest_created_execution.completion_status = (
                    Status.EXECUTION_SUCCEEDED if succeeded else
                    Status.EXECUTION_CANCELLED if reason == "CANCELLED" else Status.EXECUTION_FAILED)
            if succeeded:
                self._ops.finish(op_name, metadata=execution, response=execution)
            else:
                self._ops.finish(op_name, metadata=execution, error=(grpc.StatusCode.UNKNOWN, message))


def _missing(name: str, kind: str = "JOB") -> str:
    return f"Resource '{name.rsplit('/', 1)[-1]}' of kind '{kind}' in region '{_region(name)}' does not exist."


def _region(name: str) -> str:
    parts = name.split("/")
    return parts[3] if len(parts) > 3 else ""
