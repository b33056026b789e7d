"""Fill ``${name}`` placeholders in stage params from the release's pinned inputs.

Only the names in ``pipeline_schema.PLACEHOLDERS`` (which validation checks files against) are
ours. Anything else (``${_CLOUDSQL_INSTANCE}``, ``$PROJECT_ID``,
``$BUILDER_OUTPUT``) belongs to Cloud Build or the shell and stays as written, and
``$$`` (Cloud Build's escaped dollar) is left untouched so the step still sees ``$``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.pipeline import Pipeline
# "$$" first, so that "$${tag}" is read as an escaped dollar followed by "{tag}".
_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def image_ref(settings: Settings, pipeline: Pipeline, tag: str) -> str:
    """``registry/image:tag``; without a registry just ``image:tag``.

    A docker tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``
    (https://docs.docker.com/reference/cli/docker/image/tag/): semver build metadata
    (``v1.2.3+build.5-abc1234``) cannot ride in it, so ``+`` becomes ``_`` there
    (the release's own tag keeps it)."""
    registry = settings.artifact_registry.rstrip("/")
    name = f"{registry}/{pipeline.image}" if registry else pipeline.image
    return f"{name}:{docker_tag(tag)}"


def release_image(settings: Settings, pipeline: Pipeline, command: StartStage) -> str:
    """``registry/image@sha256:...``: the image this release's build pushed, pinned by the
    digest the build reported (the gate passes it as input ``digest``), so what a deploy or
    job runs stays fixed when a tag moves; "" when no stage before reported a digest."""
    digest = str(command.inputs.get("digest") or "")
    if not digest:
        return ""
    registry = settings.artifact_registry.rstrip("/")
    name = f"{registry}/{pipeline.image}" if registry else pipeline.image
    return f"{name}@{digest}"


def image_digest_of(image: str) -> str:
    """The ``sha256:...`` part of an image reference ("" when it names none)."""
    return image.rsplit("@", 1)[1] if "@" in image else ""


def docker_tag(tag: str) -> str:
    return tag.replace("+", "_")


def variables_for(settings: Settings, pipeline: Pipeline, command: StartStage) -> dict[str, str]:
    inputs = command.inputs
    tag = str(inputs.get("tag") or "")
    return {
        "tag": tag,
        "version": str(inputs.get("version") or ""),
        "commit": str(inputs.get("commit") or ""),
        "release_id": command.release_id,
        "stage_run_id": command.stage_run_id,
        "image": image_ref(settings, pipeline, tag),
        "registry": settings.artifact_registry,
        "source_url": source_url(settings, str(inputs.get("repo") or "")),
        "project": settings.project,
    }


def source_url(settings: Settings, repo: str) -> str:
    """Where builds fetch the pushed commit: the setting, else the GitHub repository pushed to."""
    return settings.source_url or (f"https://github.com/{repo}.git" if repo else "")


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """Return ``value`` with our placeholders filled, recursively through mappings and lists.

    Pure: the input (often a frozen mapping from the pipeline) is not modified; the
    result is made of plain dicts and lists, ready for the client libraries.
    """
    if isinstance(value, str):
        return _TOKEN.sub(lambda m: _replace(m, variables), value)
    if isinstance(value, Mapping):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, variables) for v in value]
    return value


def _replace(match: re.Match, variables: Mapping[str, str]) -> str:
    name = match.group(1)
    if name is None or name not in variables:
        return match.group(0)
    return str(variables[name])
