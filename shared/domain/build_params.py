"""The build-specific fields of a ``kind: build`` stage, checked when the pipeline loads.

Cloud Build refuses these at CreateBuild; refusing them here names the stage and line
instead of failing the release at stage 1:

* ``substitutions``: user keys match ``^_[A-Z0-9_]+$``
  (https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
* ``steps[].secretEnv`` names must be defined in ``available_secrets``
  (https://cloud.google.com/build/docs/securing-builds/use-secrets).
* ``source``: ``git`` (the pushed commit of the released repository, fetched anonymously),
  ``{url, revision, dir}``, or ``{connected_repository, revision, dir}`` with a 2nd-gen repository
  ``projects/P/locations/L/connections/C/repositories/R`` (Source.connectedRepository: how Cloud
  Build reaches a private repository); without it the build starts in an empty /workspace.
* ``logging``: one of Cloud Build's LoggingMode names; a build that runs as a user-specified
  service account needs CLOUD_LOGGING_ONLY, NONE or a logs bucket (the executor defaults to
  CLOUD_LOGGING_ONLY).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from shared.domain.pipeline_schema import EXTRA_PLACEHOLDERS, PLACEHOLDERS, Invalid, Path

USER_SUBSTITUTION = re.compile(r"^_[A-Z0-9_]+$")
# Ours: the executors fill ${name} from the release before the build is created.
RELEASE_PLACEHOLDERS = PLACEHOLDERS + EXTRA_PLACEHOLDERS
# Cloud Build's own (same page, "Using default substitutions"), and $BUILDER_OUTPUT, which it
# leaves alone. Anything else after a single '$' is refused by CreateBuild.
CLOUD_BUILD_NAMES = frozenset({
    "PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA", "REVISION_ID",
    "SHORT_SHA", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT", "BUILDER_OUTPUT",
})
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
LOGGING_MODES = ("CLOUD_LOGGING_ONLY", "NONE", "GCS_ONLY", "LEGACY", "STACKDRIVER_ONLY")
SOURCE_FIELDS = {"url", "connected_repository", "revision", "dir"}
CONNECTED_REPOSITORY = re.compile(r"^projects/[^/]+/locations/[^/]+/connections/[^/]+/repositories/[^/]+$")


def check_build_params(params: Mapping[str, Any], path: Path, where: str) -> None:
    """``where`` is ``stage 'x': ``; problems are ``Invalid`` with the path of the value."""
    substitutions = params.get("substitutions") or {}
    for key in substitutions:
        if not USER_SUBSTITUTION.match(str(key)):
            raise Invalid(path + ("substitutions", key), f"{where}params.substitutions: key {key!r} must match "
                          "^_[A-Z0-9_]+$ (Cloud Build refuses user substitutions without a leading '_')")
    secrets = params.get("available_secrets") or {}
    for i, step in enumerate(params.get("steps") or []):
        if not isinstance(step, Mapping):
            continue
        for text in _strings(step):
            _check_references(text, substitutions, path + ("steps", i), f"{where}params.steps[{i}]")
        for name in step.get("secretEnv") or []:
            if name not in secrets:
                raise Invalid(path + ("steps", i, "secretEnv"), f"{where}params.steps[{i}].secretEnv: {name!r} "
                              "is not defined in params.available_secrets")
    source = params.get("source")
    if source is not None and source != "git":
        if (not isinstance(source, Mapping) or set(source) - SOURCE_FIELDS
                or bool(source.get("url")) == bool(source.get("connected_repository"))):
            raise Invalid(path + ("source",), f"{where}params.source: must be 'git' or a mapping with url or "
                          "connected_repository (and revision, dir)")
        repository = source.get("connected_repository")
        if repository and not CONNECTED_REPOSITORY.match(str(repository)):
            raise Invalid(path + ("source", "connected_repository"), f"{where}params.source.connected_repository: "
                          f"{repository!r} is not projects/P/locations/L/connections/C/repositories/R")
    logging = params.get("logging")
    if logging is not None and logging not in LOGGING_MODES:
        raise Invalid(path + ("logging",), f"{where}params.logging: {logging!r} is not one of "
                      f"{', '.join(LOGGING_MODES)}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _check_references(text: str, substitutions: Mapping[str, Any], path: Path, where: str) -> None:
    """Every ``$NAME`` Cloud Build will see must be one it knows: ``$$`` escapes a shell variable."""
    for match in _TOKEN.finditer(text):
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name is None or name in RELEASE_PLACEHOLDERS or name in CLOUD_BUILD_NAMES:
            continue
        if name.startswith("_") and name in substitutions:
            continue
        hint = ("define it in params.substitutions" if name.startswith("_") else
                f"a user substitution needs a leading '_' (${{_{name}}}); a shell variable is written $${name}")
        raise Invalid(path, f"{where}: ${{{name}}} is not a Cloud Build substitution: {hint}")


def connected_repositories(pipeline) -> set[str]:
    """The 2nd-gen repositories the pipeline's build stages fetch (``${project}`` as written):
    the build account needs read-token access on their connections."""
    names = set()
    for stage in pipeline.stages:
        source = stage.params.get("source") if stage.kind.value == "build" else None
        if isinstance(source, Mapping) and source.get("connected_repository"):
            names.add(str(source["connected_repository"]))
    return names


def private_checked_services(pipeline) -> set[str]:
    """Cloud Run services the pipeline's checks call with an ID token (``auth: id_token``): the account
    the checks run as needs roles/run.invoker on each."""
    return {str(stage.params["service"]) for stage in pipeline.stages
            if stage.kind.value == "check" and stage.params.get("auth") == "id_token" and stage.params.get("service")}
