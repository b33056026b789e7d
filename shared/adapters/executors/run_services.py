"""Stages of kind ``deploy`` and ``traffic`` on Cloud Run services, and ``rollback``.

A deploy writes a new revision template (image ``registry/image:tag``, labels
``version`` and ``commit``, env from params.env) under a revision name derived from
service and stage-run id, together with the traffic split, in one UpdateService.
Repeating the command finds that revision and changes nothing. The traffic stage
moves the share of the revision the prod deploy created, found by its commit label.
Both finish when their operations are done; the sweeper sees that through ``poll``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from google.api_core import exceptions as gexc

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError, ResourceNotFound
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.substitute import substitute, variables_for
from shared.adapters.executors.traffic import (
    Split,
    current_split,
    plan_split,
    release_labels,
    revision_name,
    serving_most,
    short_revision,
    split_reached,
    to_traffic_targets,
)
from shared.domain.pipeline import Pipeline, Stage
from shared.app.ports import StageFinish, StartResult
from shared.domain.stage_results import revisions_as_stored
from shared.domain.state import StageState
from shared.adapters.executors import default_clients

DEFAULT_CANARY_TAG = "canary"


def service_path(settings: Settings, service: str) -> str:
    return f"projects/{settings.project}/locations/{settings.region}/services/{service}"


def apply_env(container: Any, env: Mapping[str, Any]) -> None:
    """``--update-env-vars``: the variables ``env`` names get these values; every other
    variable of the service (plain or from Secret Manager) stays as it is, so a deploy
    never drops the settings a service was configured with."""
    from google.cloud import run_v2

    kept = [e for e in container.env if e.name not in env]
    container.env = kept + [run_v2.EnvVar(name=str(k), value=str(v)) for k, v in env.items()]


def new_template(template: Any, revision: str, image: str, labels: Mapping[str, str], env: Mapping[str, Any]):
    """The service's template with our revision name, image, labels and env; everything
    else (service account, scaling, VPC access) stays as the service had it."""
    from google.cloud import run_v2

    result = run_v2.RevisionTemplate.deserialize(run_v2.RevisionTemplate.serialize(template)) if template else (
        run_v2.RevisionTemplate())
    result.revision = revision
    merged = dict(result.labels)
    merged.update(labels)
    result.labels = merged
    if not result.containers:
        result.containers = [run_v2.Container()]
    container = result.containers[0]
    container.image = image
    apply_env(container, env)
    return result


@dataclass(frozen=True)
class _Done:
    failure: str = ""
    url: str = ""


class _ServiceStages:
    """What deploy and traffic share: reading services and finishing by operations."""

    def __init__(self, settings: Settings, services: Any, revisions: Any, caller: ApiCaller | None = None):
        self.settings = settings
        self.services = services
        self.revisions = revisions
        self.caller = caller or ApiCaller()

    def _get_service(self, name: str) -> Any | None:
        try:
            return self.services.get_service(name=name, retry=None, timeout=self.caller.timeout)
        except gexc.NotFound:
            return None

    def _revision_exists(self, name: str) -> bool:
        try:
            self.revisions.get_revision(name=name, retry=None, timeout=self.caller.timeout)
            return True
        except gexc.NotFound:
            return False

    def _update(self, service: Any, template: Any | None, split: list[Split]) -> str:
        if template is not None:
            service.template = template
        service.traffic = to_traffic_targets(split)
        operation = self.services.update_service(service=service, retry=None, timeout=self.caller.timeout)
        return operation.operation.name

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        targets = revisions_as_stored(state.result) or self._expected_targets(stage, state)
        if not targets:
            return None  # nothing recorded and nothing to derive: the deadline decides
        urls: dict[str, str] = {}
        for target in targets:
            what = f"checking {target['revision']} of {target['service']}"
            ended = self.caller.call(what, lambda t=target: self._target_state(t), stage=stage.id)
            if ended is None:
                return None
            if ended.failure:
                return StageFinish(Outcome.FAILED, ended.failure, {"revisions": targets})
            urls[target["service"]] = ended.url
        return StageFinish(Outcome.SUCCEEDED, "", {"revisions": targets, "urls": urls})

    def _expected_targets(self, stage: Stage, state: StageState) -> list[dict[str, Any]]:
        """Targets when no handle was recorded; only a deploy can derive them (from its names)."""
        return []

    def _target_state(self, target: Mapping[str, Any]) -> "_Done | None":
        """None while the rollout runs; otherwise how it ended."""
        from google.cloud import run_v2

        error = self._operation_error(str(target.get("operation") or ""))
        if error:
            return _Done(failure=f"{target['service']}: {error}")
        service = self._get_service(service_path(self.settings, target["service"]))
        if service is None:
            return _Done(failure=f"service {target['service']} does not exist")
        revision = target["revision"]
        failed = run_v2.Condition.State.CONDITION_FAILED
        if short_revision(service.latest_created_revision) == revision and service.terminal_condition.state == failed:
            return _Done(failure=f"{target['service']}: {service.terminal_condition.message or 'revision failed'}")
        if service.reconciling:
            return None
        split = current_split(service)
        if target.get("percent") is None:  # derived without a handle: serving at all is enough
            done = short_revision(service.latest_ready_revision) == revision and any(
                s.revision == revision and s.percent > 0 for s in split)
        else:
            done = split_reached(split, [Split(revision, int(target["percent"]))])
        return _Done(url=service.uri) if done else None

    def _operation_error(self, name: str) -> str:
        """The error of a finished operation, '' otherwise (also when the server keeps none)."""
        if not name:
            return ""
        try:
            operation = self.services.get_operation(request={"name": name}, retry=None, timeout=self.caller.timeout)
        except (gexc.NotFound, gexc.MethodNotImplemented):
            return ""
        if operation.done and operation.HasField("error") and operation.error.code:
            return operation.error.message or f"operation {name} failed"
        return ""


class DeployExecutor(_ServiceStages):
    def _expected_targets(self, stage: Stage, state: StageState) -> list[dict[str, Any]]:
        if not state.stage_run_id:
            return []
        names = list(stage.params["services"]) + list(stage.params.get("background_services") or [])
        return [{"service": str(s), "revision": revision_name(str(s), state.stage_run_id), "percent": None}
                for s in names]

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        variables = variables_for(self.settings, pipeline, command)
        if not variables["tag"]:
            raise ExecutorError("deploy without a tag is refused", release_id=command.release_id, stage=stage.id)
        params = substitute(stage.params, variables)
        percent = int(params["traffic_percent"])
        tag = str(params.get("revision_tag") or (DEFAULT_CANARY_TAG if percent < 100 else ""))
        labels = release_labels(variables["version"], variables["commit"])
        env = dict(params.get("env") or {})
        targets = []
        # Services that serve no requests (workers, schedulers): a traffic split means nothing to
        # them, so their new revision takes everything at once, in this same gated stage.
        rollout = [(str(s), percent, tag) for s in params["services"]] + [
            (str(s), 100, "") for s in params.get("background_services") or []]
        for service_id, share, share_tag in rollout:
            revision = revision_name(service_id, command.stage_run_id)

            def deploy(service_id: str = service_id, revision: str = revision, share: int = share,
                       share_tag: str = share_tag) -> dict[str, Any]:
                return self._deploy_one(service_id, revision, variables["image"], labels, env, share, share_tag)

            targets.append(self.caller.call(
                f"deploying {variables['image']} to {service_id}", deploy,
                release_id=command.release_id, stage=stage.id,
            ))
        return StartResult(handle={"revisions": targets, "image": variables["image"]})

    def _deploy_one(self, service_id: str, revision: str, image: str, labels: Mapping[str, str],
                    env: Mapping[str, Any], percent: int, tag: str) -> dict[str, Any]:
        from google.cloud import run_v2

        name = service_path(self.settings, service_id)
        target = {"service": service_id, "revision": revision, "percent": percent, "tag": tag, "operation": ""}
        service = self._get_service(name)
        if service is None:
            template = new_template(None, revision, image, labels, env)
            fresh = run_v2.Service(template=template, traffic=to_traffic_targets([Split(revision, 100, tag)]))
            operation = self.services.create_service(
                parent=name.rsplit("/services/", 1)[0], service=fresh, service_id=service_id,
                retry=None, timeout=self.caller.timeout,
            )
            return {**target, "percent": 100, "operation": operation.operation.name, "created": True}
        if service.template.revision == revision or self._revision_exists(f"{name}/revisions/{revision}"):
            return {**target, "percent": _served(service, revision, percent), "reused": True}
        split = plan_split(current_split(service), revision, percent, tag)
        template = new_template(service.template, revision, image, labels, env)
        target["percent"] = split[0].percent
        target["serving_before"] = serving_most(current_split(service))  # where a rollback goes back to
        if len(split) > 1:
            target["previous"] = split[1].revision
        return {**target, "operation": self._update(service, template, split)}


def _served(service: Any, revision: str, percent: int) -> int:
    """What a repeated start should wait for: the share the first start asked for."""
    share = sum(s.percent for s in current_split(service) if s.revision == revision)
    return share or percent


class TrafficExecutor(_ServiceStages):
    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        variables = variables_for(self.settings, pipeline, command)
        params = substitute(stage.params, variables)
        labels = release_labels(variables["version"], variables["commit"])
        targets = []
        for service_id in params["services"]:
            def move(service_id: str = str(service_id)) -> dict[str, Any]:
                return self._move_one(service_id, labels, int(params["percent"]), str(params.get("revision_tag") or ""))

            targets.append(self.caller.call(
                f"moving traffic of {service_id}", move, release_id=command.release_id, stage=stage.id,
            ))
        return StartResult(handle={"revisions": targets})

    def _move_one(self, service_id: str, labels: Mapping[str, str], percent: int, default_tag: str) -> dict[str, Any]:
        name = service_path(self.settings, service_id)
        service = self._get_service(name)
        if service is None:
            raise ResourceNotFound(f"service {service_id} does not exist; the deploy stage must run first")
        current = current_split(service)
        revision = self._release_revision(name, labels, current)
        if revision is None:
            raise ExecutorError(
                f"no revision of {service_id} carries commit {labels['commit']} (version {labels['version']}); "
                "did the deploy stage of this release run?"
            )
        tag = next((s.tag for s in current if s.revision == revision and s.tag), default_tag)
        target = {"service": service_id, "revision": revision, "percent": percent, "tag": tag, "operation": ""}
        if split_reached(current, [Split(revision, percent)]):
            return {**target, "reused": True}
        split = plan_split(current, revision, percent, tag)
        return {**target, "operation": self._update(service, None, split)}

    def _release_revision(self, service_name: str, labels: Mapping[str, str], current: list[Split]) -> str | None:
        """The revision of this release (labelled with its commit and version).

        A replayed deploy leaves several: prefer the one serving traffic now (the canary
        the prod smoke checked), else the newest that did not fail.
        """
        from google.cloud import run_v2

        failed = run_v2.Condition.State.CONDITION_FAILED
        serving = {s.revision for s in current if s.percent > 0}
        candidates = []
        for revision in self.revisions.list_revisions(parent=service_name, retry=None, timeout=self.caller.timeout):
            if not all(revision.labels.get(k) == v for k, v in labels.items()):
                continue
            if any(c.type_ == "Ready" and c.state == failed for c in revision.conditions):
                continue
            created = revision.create_time.timestamp() if revision.create_time else 0.0
            candidates.append((short_revision(revision.name) in serving, created, short_revision(revision.name)))
        return max(candidates)[2] if candidates else None


def rollback(settings: Settings, service: str, to_revision: str | None = None, *,
             clients: Mapping[str, Any] | None = None, caller: ApiCaller | None = None) -> dict[str, Any]:
    """Move 100 % of ``service``'s traffic to ``to_revision``, or to the last good tagged one.

    The last good one is found from the service's revisions, newest first by create
    time: skip the newest (the release being rolled back), then take the first that
    is Ready and carries a ``version`` label (so it was deployed from a tag; a
    deploy without a tag is refused, so every revision we made has one).

    This is the fast path: it only moves traffic. When the revision to go back to is
    gone, ``registry_rollback.rollback_to_tag`` (an explicit tag) or
    ``rollback_from_registry`` (the newest older release tag in Artifact Registry)
    first look for a revision running that image, and only then deploy it anew.
    """
    clients = clients or default_clients(settings, ("services", "revisions"))
    caller = caller or ApiCaller()
    name = service_path(settings, service)

    def move() -> dict[str, Any]:
        current = clients["services"].get_service(name=name, retry=None, timeout=caller.timeout)
        revisions = sorted(
            clients["revisions"].list_revisions(parent=name, retry=None, timeout=caller.timeout),
            key=lambda r: r.create_time.timestamp() if r.create_time else 0.0, reverse=True,
        )
        chosen = _choose_rollback(revisions, to_revision, service)
        target = short_revision(chosen.name)
        serving = serving_most(current_split(current))
        current.traffic = to_traffic_targets([Split(target, 100)])
        operation = clients["services"].update_service(service=current, retry=None, timeout=caller.timeout)
        return {
            "service": service, "revision": target, "from": serving,
            "version": chosen.labels.get("version", ""), "commit": chosen.labels.get("commit", ""),
            "operation": operation.operation.name,
        }

    return caller.call(f"rolling back {service}", move)


def _choose_rollback(revisions: list[Any], to_revision: str | None, service: str) -> Any:
    from google.cloud import run_v2

    if to_revision:
        for revision in revisions:
            if short_revision(revision.name) == short_revision(to_revision):
                return revision
        raise ResourceNotFound(f"revision {to_revision} of {service} does not exist")
    succeeded = run_v2.Condition.State.CONDITION_SUCCEEDED
    for revision in revisions[1:]:
        ready = [c for c in revision.conditions if c.type_ == "Ready"]
        if revision.labels.get("version") and (not ready or ready[0].state == succeeded):
            return revision
    raise ExecutorError(f"{service} has no earlier ready revision deployed from a tag to roll back to")
