"""google.devtools.cloudbuild.v1.CloudBuild: builds that really run, or follow a set outcome.

A step whose image is local runs as a process in the workspace; any other image
follows the outcome rule matching the build's tags, and without one the build
fails saying so, so a stage can never pass by accident.
"""
from __future__ import annotations

import re
import tempfile
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Callable

import grpc
from google.longrunning.operations_pb2 import Operation
from google.cloud.devtools.cloudbuild_v1.types import (
    Build, BuildOperationMetadata, BuildStep, BuiltImage, CancelBuildRequest, CreateBuildRequest, GetBuildRequest,
    ListBuildsRequest, ListBuildsResponse, TimeSpan,
)

from local.standin.build_rules import apply_substitutions, built_ins, check_build
from local.standin.identity import default_compute_account, mint_key
from local.standin.images import keep_image
from local.standin.log_files import LogFiles
from local.standin.common import ApiError, OperationStore, OutcomeRules, StandInConfig, clone, image_is_local, now
from local.standin.processes import Supervisor, child_env
from local.standin.workspace import IMAGES_FILE_ENV, BuildWorkspace

SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"
# The Build proto, build_step_outputs: "Only the first 50KB of data is stored."
STEP_OUTPUT_LIMIT = 50 * 1024
DEFAULT_TIMEOUT = timedelta(minutes=10)
Status = Build.Status
TERMINAL = {Status.SUCCESS, Status.FAILURE, Status.INTERNAL_ERROR, Status.TIMEOUT, Status.CANCELLED, Status.EXPIRED}
PARENT = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
BUILD_NAME = re.compile(r"^projects/([^/]+)/locations/([^/]+)/builds/([^/]+)$")
_FILTER_TERM = re.compile(r'^\s*(\w+)\s*=\s*"?([^"]*)"?\s*$')


class CloudBuildService:
    def __init__(self, config: StandInConfig, operations: OperationStore, outcomes: OutcomeRules,
                 supervisor: Supervisor, publish: Callable[[Build], None], logs: LogFiles) -> None:
        self._cfg = config
        self._logs = logs
        self._ops = operations
        self._outcomes = outcomes
        self._supervisor = supervisor
        self._publish = publish
        self._builds: dict[str, Build] = {}
        self._op_names: dict[str, str] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.RLock()
        self.guard = None  # the IamGuard: steps and pushes act as the build's service account
        # 2nd-gen repositories (projects/P/locations/L/connections/C/repositories/R) -> (the local git
        # repository standing for it, the accounts granted cloudbuild.repositories.accessReadToken on
        # its connection); and the git URLs that need credentials (private repositories).
        self._connected: dict[str, tuple[str, frozenset[str]]] = {}
        self._private: set[str] = set()

    def connect_repository(self, name: str, local_path: str, readers: tuple[str, ...] = ()) -> None:
        with self._lock:
            self._connected[name] = (local_path, frozenset(readers))

    def mark_private(self, url: str) -> None:
        with self._lock:
            self._private.add(url)

    def register(self, registry) -> None:
        registry.add(SERVICE, "CreateBuild", self.create_build, CreateBuildRequest, Operation)
        registry.add(SERVICE, "GetBuild", self.get_build, GetBuildRequest, Build)
        registry.add(SERVICE, "ListBuilds", self.list_builds, ListBuildsRequest, ListBuildsResponse)
        registry.add(SERVICE, "CancelBuild", self.cancel_build, CancelBuildRequest, Build)

    # -- recorded state, for tests -------------------------------------------------------
    def all(self) -> list[Build]:
        with self._lock:
            return [clone(b) for b in self._builds.values()]

    def snapshot(self, build_id: str) -> Build:
        with self._lock:
            if build_id not in self._builds:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"build {build_id} not found")
            return clone(self._builds[build_id])

    # -- RPCs ----------------------------------------------------------------------------
    def create_build(self, request: CreateBuildRequest) -> Operation:
        project = request.project_id or self._cfg.project
        location = "global"
        if request.parent:
            match = PARENT.match(request.parent)
            if not match:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
            project, location = match.groups()
        build = clone(request.build)
        check_build(build)
        if build.source.connected_repository.repository and not build.source.connected_repository.revision:
            # ConnectedRepository.revision: "Required. The revision to fetch from the Git repository"
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "source.connected_repository.revision is required")
        build.id = str(uuid.uuid4())
        apply_substitutions(build, built_ins(build, project, location, self._cfg.project_number))
        build.project_id = project
        build.name = f"projects/{project}/locations/{location}/builds/{build.id}"
        build.status = Status.QUEUED
        build.create_time = now()
        if not build.timeout:
            build.timeout = DEFAULT_TIMEOUT
        build.log_url = self._logs.url("builds", build.id)  # GCP: a console link; here the served file
        if not build.logs_bucket and build.options.logging.name not in ("CLOUD_LOGGING_ONLY", "STACKDRIVER_ONLY", "NONE"):
            build.logs_bucket = f"gs://{project}_cloudbuild/logs"  # the default bucket
        with self._lock:
            self._builds[build.id] = build
            self._cancel[build.id] = threading.Event()
            op = self._ops.create(BuildOperationMetadata(build=build))
            self._op_names[build.id] = op.name
            self._publish(clone(build))
        threading.Thread(target=self._run, args=(build.id,), name=f"build-{build.id[:8]}", daemon=True).start()
        return op

    # https://cloud.google.com/build/docs/api/reference/rest/v1/projects.locations.builds/get
    # "Note: This method only gets builds in the "global" region when using the legacy resource path
    #  projects/{projectId}/builds/{id}. For all regions, use the regional resource path:
    #  projects/{projectId}/locations/{location}/builds/{id}." (list and cancel say the same): a build
    # lives in the location it was created in, and under any other it does not exist (NOT_FOUND).
    def get_build(self, request: GetBuildRequest) -> Build:
        with self._lock:
            return clone(self._located(request.name, request.project_id, request.id))

    def list_builds(self, request: ListBuildsRequest) -> ListBuildsResponse:
        conditions = _parse_filter(request.filter)
        project, location = request.project_id, "global"
        if request.parent:
            match = PARENT.match(request.parent)
            if not match:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {request.parent!r}")
            project, location = match.groups()
        where = f"projects/{project}/locations/{location}/builds/"
        with self._lock:
            builds = [b for b in self._builds.values() if b.name.startswith(where) and _matches(b, conditions)]
        builds.reverse()  # newest first, like the real API
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = builds[start:start + size]
        token = str(start + size) if start + size < len(builds) else ""
        return ListBuildsResponse(builds=[clone(b) for b in page], next_page_token=token)

    def cancel_build(self, request: CancelBuildRequest) -> Build:
        with self._lock:
            build = self._located(request.name, request.project_id, request.id)
            if build.status not in TERMINAL:
                self._cancel[build.id].set()
                self._finish(build, Status.CANCELLED, "Build was cancelled")
            return clone(build)

    def _located(self, name: str, project: str, build_id: str) -> Build:
        """The build a request names: by its regional name, else by project and id in "global"."""
        if name:
            match = BUILD_NAME.match(name)
            if not match:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid build name {name!r}")
            project, location, build_id = match.groups()
        else:
            location = "global"
        build = self._builds.get(build_id)
        if build is None or build.name != f"projects/{project}/locations/{location}/builds/{build_id}":
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"build {build_id} not found in projects/{project}/locations/"
                           f"{location}")
        return build

    # -- execution -----------------------------------------------------------------------
    def _run(self, build_id: str) -> None:
        with self._lock:
            build = self._builds[build_id]
            if build.status in TERMINAL:
                return
            build.status = Status.WORKING
            build.start_time = now()
            self._publish(clone(build))
            self._ops.update_metadata(self._op_names[build_id], BuildOperationMetadata(build=build))
            steps = [clone(s) for s in build.steps]
            timeout_s = build.timeout.total_seconds()
            tags = list(build.tags)
            source = clone(build.source)
            images = list(build.images)
        workspace = BuildWorkspace(self._cfg.log_dir / "workspaces", build_id)
        try:
            self._run_in(build_id, steps, tags, source, images, workspace, build.start_time.timestamp() + timeout_s)
        finally:
            workspace.remove()

    def _run_in(self, build_id: str, steps: list[BuildStep], tags: list[str], source, images: list[str],
                workspace: BuildWorkspace, deadline: float) -> None:
        cancel = self._cancel[build_id]
        outputs: list[bytes] = []
        problem = self._fetch_source(build_id, source, workspace)
        if "@" not in self._account(build_id):  # a uniqueId: valid for Cloud Build (build_rules.SA_NAME)
            problem = (f"stand-in: cannot act as {self._account(build_id)}: it knows service accounts by e-mail "
                       "only (name the build's account by its e-mail address)")
        if problem:
            self._end(build_id, Status.FAILURE, problem, outputs)
            return
        for index, step in enumerate(steps):
            if cancel.is_set():
                return
            started = now()
            self._set_step(build_id, index, Status.WORKING, started, None)
            if image_is_local(step.name, self._cfg.local_images):
                status, detail, output = self._run_local_step(build_id, index, step, workspace,
                                                              source.git_source.dir_ or source.connected_repository.dir_,
                                                              deadline - now().timestamp())
            else:
                status, detail, output = self._follow_rule(build_id, step, tags, cancel, deadline)
            if status is Status.SUCCESS:
                detail = workspace.record_docker_step(step.name, list(step.args))
                status = Status.FAILURE if detail else status
            if cancel.is_set():
                return
            outputs.append(output)
            self._set_step(build_id, index, status, started, now())
            if status is not Status.SUCCESS:
                self._end(build_id, status, detail, outputs)
                return
        missing = [image for image in images if image not in workspace.built()]
        if missing:
            self._end(build_id, Status.FAILURE, f"failed to push {missing[0]}: An image does not exist locally "
                      "with the tag (no step of this build built it)", outputs)
            return
        # Build proto, images: "The images are pushed using the builder service account's credentials."
        account = self._account(build_id)
        upload = "artifactregistry.repositories.uploadArtifacts"
        if images and self.guard is not None and self.guard.enforcing and not self.guard.holds(
                f"serviceAccount:{account}", upload):
            self._end(build_id, Status.FAILURE, f"failed to push {images[0]}: denied: Permission '{upload}' denied "
                      f"on resource for {account} (or it may not exist)", outputs)
            return
        # The pushed images are the tree the steps left in the build context (images.py).
        built = {}
        if images:
            digest = keep_image(self._cfg.log_dir / "images", workspace.path / source.git_source.dir_)
            built = {ref: digest for ref in images}
        self._end(build_id, Status.SUCCESS, "", outputs, built)

    def _account(self, build_id: str) -> str:
        with self._lock:
            named = self._builds[build_id].service_account
        return named.rsplit("/", 1)[-1] if named else default_compute_account(self._cfg.project_number)

    def _fetch_source(self, build_id: str, source, workspace: BuildWorkspace) -> str:
        git, connected = source.git_source, source.connected_repository
        if git.url:
            with self._lock:
                private = git.url in self._private
            if private:
                # GitSource is "the source in any accessible Git repository" (cloudbuild.proto), fetched
                # without credentials: a private repository fails as git fails without a terminal. Cloud
                # Build reaches private code through a connection (Source.connectedRepository).
                return (f"failed to fetch source: fatal: could not read Username for '{git.url}': terminal "
                        "prompts disabled (a private repository: build it from a connected repository)")
            return workspace.fetch_git(git.url, git.revision)
        if connected.repository:
            with self._lock:
                target = self._connected.get(connected.repository)
            if target is None:
                return f"failed to fetch source: repository {connected.repository} not found"
            local_path, readers = target
            account = self._account(build_id)
            # repositories.accessReadToken: "Requires ... cloudbuild.repositories.accessReadToken" on the
            # repository; deploy/ grants roles/cloudbuild.readTokenAccessor on the connection to the account.
            if self.guard is not None and self.guard.enforcing and account not in readers:
                return (f"failed to fetch source: Permission 'cloudbuild.repositories.accessReadToken' denied on "
                        f"resource '{connected.repository}' (or it may not exist) for {account}")
            return workspace.fetch_git(local_path, connected.revision)
        if source.storage_source.bucket or source.repo_source.repo_name:
            return "failed to fetch source: the stand-in serves gitSource and connectedRepository only"
        return ""  # no source: the build starts in an empty /workspace

    def _run_local_step(self, build_id: str, index: int, step: BuildStep, workspace: BuildWorkspace,
                        source_dir: str, remaining_s: float) -> tuple[Status, str, bytes]:
        argv = ([step.entrypoint] if step.entrypoint else []) + list(step.args)
        if step.script:
            argv = ["bash", "-c", step.script]
        if not argv:
            return Status.FAILURE, f'Build step failure: build step {index} "{step.name}" has no command', b""
        with tempfile.TemporaryDirectory(prefix="builder-output-") as outdir:
            env = dict(item.split("=", 1) for item in step.env if "=" in item)
            env["BUILDER_OUTPUT"] = outdir
            env[IMAGES_FILE_ENV] = str(workspace.images_file)
            # Steps act as the build's service account: google-auth in a step finds its key.
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(mint_key(self._cfg.key_dir, self._account(build_id)))
            self._log_line(build_id, f"Step #{index} ({step.id or step.name}): {' '.join(argv)}")
            log_path = self._logs.path("builds", build_id)
            result = self._supervisor.run(
                argv, cwd=workspace.path / source_dir / step.dir_, env=child_env(env), log_path=log_path,
                timeout_s=max(remaining_s, 0.1), cancel=self._cancel[build_id],
            )
            output_file = Path(outdir) / "output"
            output = output_file.read_bytes()[:STEP_OUTPUT_LIMIT] if output_file.is_file() else b""
        if result.timed_out:
            return Status.TIMEOUT, f"Build timeout exceeded during step {index} \"{step.name}\"", output
        if result.exit_code != 0:
            detail = (f'Build step failure: build step {index} "{step.name}" failed: step exited with '
                      f"non-zero status: {result.exit_code}")
            if result.tail.strip():
                detail += f"; output tail: {result.tail.strip()[-500:]}"
            return Status.FAILURE, detail, output
        return Status.SUCCESS, "", output

    def _log_line(self, build_id: str, line: str) -> None:
        log_path = self._logs.path("builds", build_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(line + "\n")

    def _follow_rule(self, build_id: str, step: BuildStep, tags: list[str],
                     cancel: threading.Event, deadline: float) -> tuple[Status, str, bytes]:
        rule = self._outcomes.find("build", tags + [build_id])
        self._log_line(build_id, f"Step ({step.id or step.name}): image {step.name} does not run here; "
                       f"outcome set for the stand-in: {rule.outcome if rule else 'none'}")
        if rule is None:
            return Status.FAILURE, f"stand-in cannot run image {step.name}; no outcome set for this build", b""
        if rule.outcome == "HANG":
            # The Build proto, timeout: "If this amount of time elapses, work on the build will cease
            # and the build status will be TIMEOUT."
            if cancel.wait(max(deadline - now().timestamp(), 0)):
                return Status.CANCELLED, "Build was cancelled", b""
            return Status.TIMEOUT, f'Build timeout exceeded during step "{step.name}"', b""
        if rule.outcome == "FAILURE":
            return Status.FAILURE, rule.detail or f"build step \"{step.name}\" failed (outcome set by test)", b""
        return Status.SUCCESS, "", rule.detail.encode()[:STEP_OUTPUT_LIMIT] if rule.detail else b""

    def _set_step(self, build_id: str, index: int, status: Status, start, end) -> None:
        with self._lock:
            step = self._builds[build_id].steps[index]
            step.status = status
            step.timing = TimeSpan(start_time=start, end_time=end) if end else TimeSpan(start_time=start)

    def _end(self, build_id: str, status: Status, detail: str, outputs: list[bytes],
             built: dict[str, str] | None = None) -> None:
        with self._lock:
            build = self._builds[build_id]
            if build.status in TERMINAL:
                return
            build.results.build_step_outputs = outputs + [b""] * (len(build.steps) - len(outputs))
            if status is Status.SUCCESS:
                build.results.images = [BuiltImage(name=ref, digest=digest) for ref, digest in (built or {}).items()]
            if status is Status.FAILURE:
                build.failure_info = Build.FailureInfo(type_=Build.FailureInfo.FailureType.USER_BUILD_STEP,
                                                       detail=detail)
            self._finish(build, status, detail)

    def _finish(self, build: Build, status: Status, detail: str) -> None:
        build.status = status
        build.status_detail = detail
        build.finish_time = now()
        if not build.start_time:
            build.start_time = build.finish_time
        self._publish(clone(build))
        op = self._op_names[build.id]
        if status is Status.SUCCESS:
            self._ops.finish(op, metadata=BuildOperationMetadata(build=build), response=build)
        else:
            # The real LRO carries an error for every unsuccessful end; details live on the build.
            message = "Build failed; check build logs for details" if status is Status.FAILURE else (
                f"Build {status.name.lower()}")
            self._ops.finish(op, metadata=BuildOperationMetadata(build=build),
                             error=(grpc.StatusCode.UNKNOWN, message))

    def shutdown(self) -> None:
        """Release hanging builds so their threads end with the stand-in."""
        with self._lock:
            for event in self._cancel.values():
                event.set()

    def republish(self, build_id: str, status: str) -> None:
        build = self.snapshot(build_id)
        build.status = Status[status]
        self._publish(build)


def _parse_filter(text: str) -> list[tuple[str, str]]:
    if not text.strip():
        return []
    conditions = []
    for term in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _FILTER_TERM.match(term)
        if not match or match.group(1) not in ("tags", "status", "id", "build_trigger_id", "trigger_id"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"stand-in cannot parse filter term {term!r}")
        conditions.append((match.group(1), match.group(2)))
    return conditions


def _matches(build: Build, conditions: list[tuple[str, str]]) -> bool:
    for key, value in conditions:
        if key == "tags" and value not in build.tags:
            return False
        if key == "status" and build.status.name != value:
            return False
        if key == "id" and build.id != value:
            return False
        if key in ("build_trigger_id", "trigger_id") and build.build_trigger_id != value:
            return False
    return True

