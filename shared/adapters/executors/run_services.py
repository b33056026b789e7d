"""Stages of kind ``deploy`` and ``traffic`` on Cloud Run services, and ``rollback``.

A deploy writes a new revision template (image ``registry/image@sha256:...``, the digest
the release's build reported, or ``registry/image:tag`` when none did; labels
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
from shared.adapters.executors.substitute import release_image, substitute, variables_for
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
from shared.domain.revision_history import ServiceHistory, automatic_target, rollback_target, split_of
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


def split_record(split: list[Split]) -> list[dict[str, Any]]:
    """A split as stage results and the revision history keep it."""
    return [{"revision": s.revision, "percent": s.percent} for s in split if s.percent]


# The fields a Revision shares with the RevisionTemplate it was made from (Cloud Run Admin API v2).
_TEMPLATE_FIELDS = ("labels", "annotations", "scaling", "vpc_access", "timeout", "service_account", "containers",
                    "volumes", "execution_environment", "encryption_key", "max_instance_request_concurrency",
                    "session_affinity", "node_selector")


def template_of(revision: Any) -> Any:
    """The template that makes ``revision`` again (without its name)."""
    from google.cloud import run_v2

    template = run_v2.RevisionTemplate()
    for name in _TEMPLATE_FIELDS:
        if name in run_v2.Revision.meta.fields and name in run_v2.RevisionTemplate.meta.fields:
            setattr(template, name, getattr(revision, name))
    return template


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
    def __init__(self, settings: Settings, services: Any, revisions: Any, caller: ApiCaller | None = None,
                 histories: Any = None):
        super().__init__(settings, services, revisions, caller)
        self.histories = histories  # RevisionHistories: which revision last completed a release

    def _base_template(self, service: Any, service_id: str) -> Any:
        """The template a deploy starts from: the last revision that completed a release, never
        the service's latest template, which after a traffic-only rollback is the failed canary's.
        Without a recorded history, the revision serving most now (what Cloud Run reports)."""
        history = self.histories.read(service_id) if self.histories is not None else None
        good = history.last_completed() if history is not None else None
        base = good.name if good is not None else serving_most(current_split(service))
        if not base or short_revision(service.template.revision) == base:
            return service.template
        try:
            revision = self.revisions.get_revision(name=f"{service.name}/revisions/{base}", retry=None,
                                                   timeout=self.caller.timeout)
        except gexc.NotFound:
            return service.template
        return template_of(revision)

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
        # By digest when the release's build reported one, so a moved tag changes nothing.
        image = release_image(self.settings, pipeline, command) or variables["image"]
        targets = []
        # Services that serve no requests (workers, schedulers): a traffic split means nothing to
        # them, so their new revision takes everything at once, in this same gated stage.
        rollout = [(str(s), percent, tag) for s in params["services"]] + [
            (str(s), 100, "") for s in params.get("background_services") or []]
        for service_id, share, share_tag in rollout:
            revision = revision_name(service_id, command.stage_run_id)

            def deploy(service_id: str = service_id, revision: str = revision, share: int = share,
                       share_tag: str = share_tag) -> dict[str, Any]:
                return self._deploy_one(service_id, revision, image, labels, env, share, share_tag)

            targets.append(self.caller.call(
                f"deploying {image} to {service_id}", deploy,
                release_id=command.release_id, stage=stage.id,
            ))
        return StartResult(handle={"revisions": targets, "image": image})

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
            return {**target, "percent": 100, "operation": operation.operation.name, "created": True,
                    "before": [], "after": [{"revision": revision, "percent": 100}]}
        if service.template.revision == revision or self._revision_exists(f"{name}/revisions/{revision}"):
            return {**target, "percent": _served(service, revision, percent), "reused": True}
        before = current_split(service)
        split = plan_split(before, revision, percent, tag)
        template = new_template(self._base_template(service, service_id), revision, image, labels, env)
        target["percent"] = split[0].percent
        target["serving_before"] = serving_most(before)  # where a rollback goes back to
        target["before"], target["after"] = split_record(before), split_record(split)
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
        return {**target, "before": split_record(current), "after": split_record(split),
                "operation": self._update(service, None, split)}

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
             clients: Mapping[str, Any] | None = None, caller: ApiCaller | None = None,
             history: ServiceHistory | None = None, force: bool = False, reason: str = "",
             automatic: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Move 100 % of ``service``'s traffic to a revision that completed a release.

    The choice is ``revision_history.rollback_target`` over the service's ``history``: without
    ``to_revision`` the newest completed revision not serving 100 % now; a named one must have
    completed a release unless ``force`` (with a reason); a move that changes nothing is refused.
    ``automatic`` (the gate's rollback after a failed check or a cancel) follows
    ``revision_history.automatic_target``. Refusals are RollbackRefused.
    The answer carries the split before (read just before the move) and the one asked for, and
    the operation: the call does not wait for the rollout. ``dry_run`` answers without moving.

    This is the fast path: it only moves traffic. When the revision to go back to is gone,
    ``registry_rollback`` deploys the image of a release tag anew.
    """
    clients = clients or default_clients(settings, ("services", "revisions"))
    caller = caller or ApiCaller()
    name = service_path(settings, service)
    history = history or ServiceHistory(service)

    def move() -> dict[str, Any]:
        current = clients["services"].get_service(name=name, retry=None, timeout=caller.timeout)
        before = current_split(current)
        serving = split_of((s.revision, s.percent) for s in before)
        wanted = short_revision(to_revision or "")
        choice = (automatic_target(history, serving, wanted) if automatic
                  else rollback_target(history, serving, wanted, force=force, reason=reason))
        try:
            chosen = clients["revisions"].get_revision(name=f"{name}/revisions/{choice.revision}", retry=None,
                                                       timeout=caller.timeout)
        except gexc.NotFound:
            raise ResourceNotFound(f"revision {choice.revision} of {service} does not exist") from None
        answer = {
            "service": service, "revision": choice.revision, "forced": choice.forced,
            "from": ", ".join(r for r, _ in sorted(serving, key=lambda t: -t[1]) if r != choice.revision),
            "before": split_record(before), "after": [{"revision": choice.revision, "percent": 100}],
            "version": chosen.labels.get("version", ""), "commit": chosen.labels.get("commit", ""),
            "verdict": (history.revision(choice.revision).verdict.value
                        if history.revision(choice.revision) else ""),
        }
        if dry_run:
            return {**answer, "operation": ""}
        current.traffic = to_traffic_targets([Split(choice.revision, 100)])
        operation = clients["services"].update_service(service=current, retry=None, timeout=caller.timeout)
        # Not waited on: a rollout still running is followed by probes (the gate asks for them).
        return {**answer, "operation": operation.operation.name, "done": bool(operation.operation.done)}

    return caller.call(f"rolling back {service}", move)
