"""Stages of kind ``build``: one Cloud Build build per stage run.

The stage-run id rides on the build as tag ``run-<stage_run_id>`` (with ``rel-<release>``
and ``stage-<stage>``), so the completion notification on ``cloud-builds`` names the
attempt it ends, and a repeated start finds the build it already created.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.adapters.cloud_build_notification import RUN_TAG_PREFIX, event_from_build_notification
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.substitute import substitute, variables_for
from shared.domain.pipeline import Pipeline, Stage, parse_duration
from shared.app.ports import StageFinish, StartResult
from shared.domain.stage_results import build_id_of
from shared.domain.state import StageState

STEP_FIELDS = {"name", "entrypoint", "args", "env", "dir", "id", "waitFor", "secretEnv", "timeout", "allowFailure"}


def build_tags(release_id: str, stage: str, stage_run_id: str) -> list[str]:
    return [f"rel-{release_id}", f"{RUN_TAG_PREFIX}{stage_run_id}", f"stage-{stage}"]


def _env_list(env: Any, where: str) -> list[str]:
    """Cloud Build wants ``KEY=VALUE`` strings; the pipeline may write a mapping or that list."""
    if env in (None, "", [], {}):
        return []
    if isinstance(env, Mapping):
        return [f"{k}={v}" for k, v in env.items()]
    if isinstance(env, list) and all(isinstance(e, str) and "=" in e for e in env):
        return list(env)
    raise ExecutorError(f"{where}.env must be a mapping or a list of KEY=VALUE strings")


def _step(raw: Any, where: str):
    from google.cloud.devtools import cloudbuild_v1

    if not isinstance(raw, Mapping) or not raw.get("name"):
        raise ExecutorError(f"{where} needs at least a name (the builder image)")
    unknown = set(raw) - STEP_FIELDS
    if unknown:
        raise ExecutorError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    step = cloudbuild_v1.BuildStep(
        name=str(raw["name"]),
        args=[str(a) for a in raw.get("args") or []],
        env=_env_list(raw.get("env"), where),
        wait_for=[str(w) for w in raw.get("waitFor") or []],
        secret_env=[str(s) for s in raw.get("secretEnv") or []],
        allow_failure=bool(raw.get("allowFailure", False)),
    )
    for key, attr in (("entrypoint", "entrypoint"), ("dir", "dir_"), ("id", "id")):
        if raw.get(key):
            setattr(step, attr, str(raw[key]))
    if raw.get("timeout"):
        step.timeout = {"seconds": parse_duration(raw["timeout"], where)}
    return step


def build_from_params(settings: Settings, pipeline: Pipeline, stage: Stage, command: StartStage):
    """The Build for one stage run: steps and images from params (placeholders filled),
    our tags, and the stage's timeout. Pure apart from constructing the proto."""
    from google.cloud.devtools import cloudbuild_v1

    params = substitute(stage.params, variables_for(settings, pipeline, command))
    steps = params.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ExecutorError(f"{stage.label}: params.steps must be a non-empty list", stage=stage.id)
    build = cloudbuild_v1.Build(
        steps=[_step(raw, f"{stage.label} params.steps[{i}]") for i, raw in enumerate(steps)],
        images=[str(i) for i in params.get("images") or []],
        tags=build_tags(command.release_id, stage.id, command.stage_run_id),
        timeout={"seconds": int(stage.timeout_s)},
    )
    substitutions = params.get("substitutions")
    if isinstance(substitutions, Mapping) and substitutions:
        build.substitutions = {str(k): str(v) for k, v in substitutions.items()}
    source = _source(params.get("source"), variables_for(settings, pipeline, command))
    if source is not None:
        build.source = source
    secrets = params.get("available_secrets") or {}
    if secrets:
        build.available_secrets = cloudbuild_v1.Secrets(secret_manager=[
            cloudbuild_v1.SecretManagerSecret(env=str(env), version_name=secret_version(settings.project, str(ref)))
            for env, ref in secrets.items()])
    account = str(params.get("service_account") or settings.pipeline_service_account)
    if account:
        # Builds run as the pipeline account, not the project's default build account; such a
        # build must keep its logs out of the default bucket (CLOUD_LOGGING_ONLY needs the
        # account to hold roles/logging.logWriter, which deploy/ grants).
        build.service_account = f"projects/{settings.project}/serviceAccounts/{account}"
        build.options = cloudbuild_v1.BuildOptions(
            logging=cloudbuild_v1.BuildOptions.LoggingMode[str(params.get("logging") or "CLOUD_LOGGING_ONLY")])
    elif params.get("logging"):
        build.options = cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode[params["logging"]])
    return build


def _source(raw: Any, variables: Mapping[str, str]):
    """``git``: the released repository at the pushed commit, fetched anonymously (public repositories
    only); ``{connected_repository: projects/P/locations/L/connections/C/repositories/R}``: a repository
    of a 2nd-gen Cloud Build connection, fetched with the connection's token (private repositories);
    ``{url: ...}``: any public git URL. Revision: the pushed commit unless named; ``dir`` optional."""
    from google.cloud.devtools import cloudbuild_v1

    if not raw:
        return None
    spec = {"url": variables["source_url"], "revision": variables["commit"]} if raw == "git" else dict(raw)
    revision = str(spec.get("revision") or variables["commit"])
    if spec.get("connected_repository"):
        connected = cloudbuild_v1.ConnectedRepository(repository=str(spec["connected_repository"]), revision=revision)
        if spec.get("dir"):
            connected.dir_ = str(spec["dir"])
        return cloudbuild_v1.Source(connected_repository=connected)
    source = cloudbuild_v1.GitSource(url=str(spec["url"]), revision=revision)
    if spec.get("dir"):
        source.dir_ = str(spec["dir"])
    return cloudbuild_v1.Source(git_source=source)


def secret_version(project: str, reference: str) -> str:
    """``name``, ``name:3`` or a full resource name -> projects/P/secrets/NAME/versions/V."""
    if reference.startswith("projects/"):
        return reference if "/versions/" in reference else f"{reference}/versions/latest"
    name, _, version = reference.partition(":")
    return f"projects/{project}/secrets/{name}/versions/{version or 'latest'}"


def build_as_dict(build: Any) -> dict[str, Any]:
    """The Build in its JSON form, the same shape as a ``cloud-builds`` notification."""
    from google.cloud.devtools import cloudbuild_v1

    return json.loads(cloudbuild_v1.Build.to_json(build, use_integers_for_enums=False))


def finish_of_build(build: Any) -> StageFinish | None:
    """A terminal build as a StageFinish, read exactly as its notification would be."""
    data = build_as_dict(build)
    event = event_from_build_notification("poll", {"status": data.get("status", ""), "buildId": build.id}, data)
    if event is None:
        return None
    return StageFinish(event.outcome, event.reason, dict(event.result))


class CloudBuildExecutor:
    def __init__(self, settings: Settings, client: Any, caller: ApiCaller | None = None):
        self.settings = settings
        self.client = client
        self.caller = caller or ApiCaller()

    @property
    def _parent(self) -> str:
        return f"projects/{self.settings.project}/locations/{self.settings.build_region or self.settings.region}"

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        from google.cloud.devtools import cloudbuild_v1

        build = build_from_params(self.settings, pipeline, stage, command)

        def find_or_create() -> dict[str, str]:
            # The lookup makes a repeated start (a recovered batch) reuse its build; a start
            # known to be the first needs none (one Cloud Build call less per stage).
            existing = None if command.known_new else self._find(command.stage_run_id)
            if existing is not None:
                return self._handle(existing, reused=True)
            request = cloudbuild_v1.CreateBuildRequest(
                parent=self._parent, project_id=self.settings.project, build=build,
            )
            operation = self.client.create_build(request=request, retry=None, timeout=self.caller.timeout)
            return self._handle(operation.metadata.build)

        handle = self.caller.call(
            f"starting Cloud Build for {command.stage_run_id}", find_or_create,
            release_id=command.release_id, stage=stage.id,
        )
        return StartResult(handle=handle)

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        """Fallback for a lost notification: read the build and translate a terminal one."""
        from google.cloud.devtools import cloudbuild_v1

        build_id = build_id_of(state.result)

        def read():
            if build_id:
                request = cloudbuild_v1.GetBuildRequest(
                    name=f"{self._parent}/builds/{build_id}", project_id=self.settings.project, id=build_id,
                )
                return self.client.get_build(request=request, retry=None, timeout=self.caller.timeout)
            return self._find(state.stage_run_id)

        build = self.caller.call(f"reading the build of {state.stage_run_id}", read, stage=stage.id)
        return None if build is None else finish_of_build(build)

    def _find(self, stage_run_id: str) -> Any | None:
        """The build already carrying this stage-run id (a start repeated after a crash)."""
        from google.cloud.devtools import cloudbuild_v1

        request = cloudbuild_v1.ListBuildsRequest(
            parent=self._parent, project_id=self.settings.project, filter=f'tags="{RUN_TAG_PREFIX}{stage_run_id}"',
        )
        pager = self.client.list_builds(request=request, retry=None, timeout=self.caller.timeout)
        wanted = f"{RUN_TAG_PREFIX}{stage_run_id}"
        for build in pager:
            if wanted in build.tags:  # trust, but check: a filter the server ignored must not match all
                return build
        return None

    @staticmethod
    def _handle(build: Any, reused: bool = False) -> dict[str, Any]:
        handle: dict[str, Any] = {"build_id": build.id, "log_url": build.log_url}
        if reused:
            handle["reused"] = True
        return handle
