"""Rollback to a tag from Artifact Registry, when no revision of it is left to move traffic to.

Order (the fast path first):

1. ``rollback_to_tag``: when a Ready revision of the service already runs exactly
   ``${registry}/${image}:${tag}``, 100 % of the traffic moves to it and nothing is
   deployed (what ``run_services.rollback(..., to_revision=...)`` does).
2. Otherwise the registry must hold the tag (GetTag); a new revision of that image is
   deployed with the deploy stage's template building (``new_template``): labels
   ``version`` and ``commit`` read from the tag, env from the pipeline's deploy stage
   that names the service (filled for that tag), everything else as the service has
   it. It takes 100 % in the same UpdateService, and the call waits for the rollout.
3. ``rollback_from_registry`` picks the tag: the newest release tag of the image below
   the one the service serves now (``registry.last_good_tag``), then does 1 or 2.

A tag is mandatory: like a deploy, a rollback never deploys an untagged image.
"""
from __future__ import annotations

import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Mapping

from google.api_core import exceptions as gexc

from shared.app.config import Settings
from shared.domain.errors import ExecutorError, ResourceNotFound
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.registry import last_good_tag, parse_release_tag, repository_path, tag_exists
from shared.adapters.executors.run_services import new_template, service_path
from shared.adapters.executors.substitute import docker_tag, substitute
from shared.adapters.executors.traffic import (
    Split, current_split, release_labels, revision_name, serving_most, short_revision, to_traffic_targets,
)
from shared.domain.pipeline import Pipeline, StageKind, load_pipeline
from shared.domain.revision_history import RollbackRefused
from shared.adapters.executors import default_clients

CLIENTS = ("services", "revisions", "artifact_registry")
DEFAULT_WAIT_S = 300.0  # a Cloud Run rollout of a known-good image takes well under this


def split_image(settings: Settings, image_ref: str) -> tuple[str, str]:
    """``${registry}/team/app:v1-abc`` -> (``team/app``, ``v1-abc``); the tag is '' for a digest."""
    registry = settings.artifact_registry.strip().rstrip("/") + "/"
    if not image_ref.startswith(registry):
        raise ExecutorError(f"image {image_ref} is not under the registry {registry.rstrip('/')}; pass --image")
    path = image_ref[len(registry):].split("@", 1)[0]
    name, _, tag = path.rpartition(":") if ":" in path else (path, "", "")
    return name, tag


def deploy_env(pipeline: Pipeline, service: str, variables: Mapping[str, str]) -> dict[str, Any] | None:
    """The env the last deploy stage naming ``service`` would set for these variables; None if none names it."""
    stages = [s for s in pipeline.stages if s.kind is StageKind.DEPLOY and service in list(s.params.get("services") or [])]
    if not stages:
        return None
    return dict(substitute(stages[-1].params.get("env") or {}, variables))


def rollback_to_tag(settings: Settings, service: str, tag: str, *, image: str | None = None,
                    pipeline: Pipeline | None = None, clients: Mapping[str, Any] | None = None,
                    caller: ApiCaller | None = None, wait_s: float = DEFAULT_WAIT_S,
                    dry_run: bool = False) -> dict[str, Any]:
    """Serve ``${registry}/${image}:${tag}`` with 100 % of ``service``'s traffic (see the module doc).
    ``wait_s=0`` returns at once with the operation (the operator function: its rollout is followed
    by probes); ``dry_run`` answers what would move without moving.

    ``image`` defaults to the image the service serves now; ``pipeline`` (for the env)
    to ``settings.pipeline_file``. Returns service, revision, from, tag, version, commit,
    image, operation, and ``created`` (False on the fast path).
    """
    release = parse_release_tag(tag)
    if release is None:
        raise ExecutorError(f"rollback of {service} needs a release tag v<X.Y.Z>-<sha>, got {tag!r}; "
                            "a deployment without a tag is not allowed")
    repository_path(settings)  # a setting that names no registry fails before any call
    clients = clients or default_clients(settings, CLIENTS)
    caller = caller or ApiCaller()
    name = service_path(settings, service)
    current = caller.call(f"reading {service}", lambda: clients["services"].get_service(
        name=name, retry=None, timeout=caller.timeout))
    serving = serving_most(current_split(current))
    image = image or split_image(settings, _serving_image(clients, caller, current, serving))[0]
    ref = f"{settings.artifact_registry.strip().rstrip('/')}/{image}:{docker_tag(tag)}"
    labels = release_labels(str(release.version), release.commit)
    before = current_split(current)
    answer = {"service": service, "from": serving, "tag": tag, "image": ref, **labels,
              "before": [{"revision": t.revision, "percent": t.percent} for t in before if t.percent]}

    existing = caller.call(f"listing revisions of {service}", lambda: _ready_revision_of(clients, caller, name, ref))
    if existing:
        if [(t.revision, t.percent) for t in before if t.percent] == [(existing, 100)]:
            raise RollbackRefused(f"{service} already sends 100 % of its traffic to {existing} ({ref}); "
                                  "nothing to roll back")
        answer["after"] = [{"revision": existing, "percent": 100}]
        if dry_run:
            return {**answer, "revision": existing, "operation": "", "created": False}

        def move() -> str:
            fresh = clients["services"].get_service(name=name, retry=None, timeout=caller.timeout)
            fresh.traffic = to_traffic_targets([Split(existing, 100)])
            return clients["services"].update_service(service=fresh, retry=None, timeout=caller.timeout).operation.name

        operation = caller.call(f"moving {service} back to {existing}", move)
        return {**answer, "revision": existing, "operation": operation, "created": False}

    if not caller.call(f"looking up {ref}", lambda: tag_exists(settings, image, docker_tag(tag), clients["artifact_registry"],
                                                               caller.timeout)):
        raise ResourceNotFound(f"{ref} is not in the registry; cannot roll {service} back to it")
    if pipeline is None:
        pipeline = load_pipeline(settings.pipeline_file)
    variables = {"tag": tag, "version": str(release.version), "commit": release.commit, "release_id": "",
                 "stage_run_id": "", "image": ref, "registry": settings.artifact_registry}
    env = deploy_env(pipeline, service, variables)
    # Named once per call, so a retried UpdateService sends the same template and makes no second revision.
    revision = revision_name(service, f"rollback.{tag}.{uuid.uuid4().hex}")
    answer["after"] = [{"revision": revision, "percent": 100}]
    if dry_run:
        return {**answer, "revision": f"a new revision of {ref}", "operation": "", "created": True}

    def deploy() -> Any:
        fresh = clients["services"].get_service(name=name, retry=None, timeout=caller.timeout)
        kept = {e.name: e.value for c in fresh.template.containers[:1] for e in c.env if not e.value_source}
        fresh.template = new_template(fresh.template, revision, ref, labels, kept if env is None else env)
        fresh.traffic = to_traffic_targets([Split(revision, 100)])
        return clients["services"].update_service(service=fresh, retry=None, timeout=caller.timeout)

    operation = caller.call(f"deploying {ref} to {service}", deploy)
    if wait_s > 0:
        _wait(operation, service, revision, wait_s)
    return {**answer, "revision": revision, "operation": operation.operation.name, "created": True}


def rollback_from_registry(settings: Settings, service: str, *, image: str | None = None,
                           pipeline: Pipeline | None = None, clients: Mapping[str, Any] | None = None,
                           caller: ApiCaller | None = None, wait_s: float = DEFAULT_WAIT_S,
                           dry_run: bool = False) -> dict[str, Any]:
    """Roll ``service`` back to the newest release tag in the registry older than the tag it serves now."""
    repository_path(settings)
    clients = clients or default_clients(settings, CLIENTS)
    caller = caller or ApiCaller()
    current = caller.call(f"reading {service}", lambda: clients["services"].get_service(
        name=service_path(settings, service), retry=None, timeout=caller.timeout))
    serving_image = _serving_image(clients, caller, current, serving_most(current_split(current)))
    served_name, before = split_image(settings, serving_image)
    image = image or served_name
    if not before:
        raise ExecutorError(f"{service} serves {serving_image}, which has no tag; pass --to-tag")
    tag = caller.call(f"listing tags of {image}",
                      lambda: last_good_tag(settings, image, before, clients["artifact_registry"]))
    if tag is None:
        raise ExecutorError(f"the registry holds no release tag of {image} older than {before}; nothing to roll back to")
    moved = rollback_to_tag(settings, service, tag, image=image, pipeline=pipeline, clients=clients, caller=caller,
                            wait_s=wait_s, dry_run=dry_run)
    return {**moved, "before_tag": before}


def _serving_image(clients: Mapping[str, Any], caller: ApiCaller, service: Any, serving: str) -> str:
    """The image of the revision serving most traffic (the template's when none serves)."""
    if serving:
        revision = caller.call(f"reading revision {serving}", lambda: clients["revisions"].get_revision(
            name=f"{service.name}/revisions/{serving}", retry=None, timeout=caller.timeout))
        if revision.containers:
            return revision.containers[0].image
    containers = list(service.template.containers)
    if not containers or not containers[0].image:
        raise ExecutorError(f"cannot tell which image {short_revision(service.name)} serves; pass --image")
    return containers[0].image


def _ready_revision_of(clients: Mapping[str, Any], caller: ApiCaller, service_name: str, ref: str) -> str:
    """The newest Ready revision running exactly ``ref``; '' when none is left."""
    from google.cloud import run_v2

    succeeded = run_v2.Condition.State.CONDITION_SUCCEEDED
    found = []
    for revision in clients["revisions"].list_revisions(parent=service_name, retry=None, timeout=caller.timeout):
        ready = [c for c in revision.conditions if c.type_ == "Ready"]
        if revision.containers and revision.containers[0].image == ref and (not ready or ready[0].state == succeeded):
            found.append((revision.create_time.timestamp() if revision.create_time else 0.0, revision.name))
    return short_revision(max(found)[1]) if found else ""


def _wait(operation: Any, service: str, revision: str, wait_s: float) -> None:
    try:
        operation.result(timeout=wait_s)
    except FutureTimeout:
        raise ExecutorError(f"revision {revision} of {service} is not ready after {wait_s:g}s; "
                            f"operation {operation.operation.name} is still running") from None
    except gexc.GoogleAPICallError as exc:
        raise ExecutorError(f"revision {revision} of {service} failed: {exc.message or exc}") from None
