"""The fields a pipeline file may hold, as tables, and the checks each field passes.

Every rule of the file format lives here so that it is added once: a new stage field
goes into ``STAGE_FIELDS``, a new parameter of a kind into ``PARAMS`` (or
``COMMON_PARAMS`` when every kind reads it), each with a validator that returns the
problem in words or ``None``. ``Invalid`` carries the path of the offending value
(``("stages", 3, "params", "trafic_percent")``) so the loader can put the file's line
in front of the message; the message itself reads ``stage 'x': field: problem``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from shared.domain.errors import DefinitionError

Path = tuple[Any, ...]
Validator = Callable[[Any], "str | None"]

# Placeholders the executors fill when a stage starts (shared/adapters/executors/substitute.py),
# plus ${project}, which the preflight fills. Upper-case names (${CLOUDSQL_INSTANCE}) and
# $NAME belong to Cloud Build or the shell and are left alone.
PLACEHOLDERS = ("tag", "version", "commit", "release_id", "stage_run_id", "image", "registry", "source_url")
EXTRA_PLACEHOLDERS = ("project",)
_OUR_PLACEHOLDER = re.compile(r"\$\$|\$\{([a-z][a-z0-9_]*)\}")
DURATION = re.compile(r"^(\d+)\s*([smh]?)$")
MAX_STAGE_TIMEOUT_S = 24 * 3600  # Cloud Build's own upper limit for a build (24 h)
MAX_APPROVAL_TIMEOUT_S = 7 * 24 * 3600  # a week: longer means nobody is going to answer
ENVIRONMENTS = ("build", "staging", "prod")
CHECK_TARGETS = ("staging", "prod", "canary")


class Invalid(DefinitionError):
    """One problem of a pipeline document, with the path of the value it is about."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


def duration_s(value: Any) -> int | None:
    """Seconds from ``90``, ``"90s"``, ``"15m"`` or ``"2h"``; None when it is not one."""
    if isinstance(value, bool):
        return None
    match = DURATION.match(str(value).strip())
    if not match or int(match.group(1)) <= 0:
        return None
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _human(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


# --- validators: each returns the problem in words, or None -------------------------------

def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string, got {value!r}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


def integer(low: int, high: int) -> Validator:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer from {low} to {high}, got {value!r}"
        return None
    return check


def number(low: float, high: float) -> Validator:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            return f"must be a number from {low:g} to {high:g}, got {value!r}"
        return None
    return check


def duration(maximum_s: int | None) -> Validator:
    def check(value: Any) -> str | None:
        seconds = duration_s(value)
        if seconds is None:
            return f"{value!r} is not a positive duration like 90s, 15m or 2h"
        if maximum_s is not None and seconds > maximum_s:
            return f"{value!r} is longer than the limit of {_human(maximum_s)}"
        return None
    return check


def one_of(*choices: str) -> Validator:
    def check(value: Any) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"
    return check


def list_of(item: Validator, what: str, min_items: int = 0) -> Validator:
    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return f"must be a list of {what}, got {type(value).__name__} {value!r}"
        if len(value) < min_items:
            return f"must list at least {min_items} of {what}"
        for i, element in enumerate(value):
            problem = item(element)
            if problem:
                return f"item {i}: {problem}"
        return None
    return check


def mapping(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else f"must be a mapping, got {type(value).__name__}"


def scalar_mapping(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping of names to values, got {type(value).__name__}"
    for key, item in value.items():
        if isinstance(item, (Mapping, list, tuple)):
            return f"{key}: must be a single value, got {type(item).__name__}"
    return None


def step(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        return f"must be a mapping with a 'name' (the builder image), got {value!r}"
    return None


@dataclass(frozen=True)
class Field:
    check: Validator
    required: bool = False


# --- the tables ----------------------------------------------------------------------------

STAGE_FIELDS: dict[str, Field] = {
    "id": Field(text, required=True),
    "number": Field(lambda v: None if isinstance(v, (str, int)) and not isinstance(v, bool)
                    else f"must be a stage number like 7 or \"10a\", got {v!r}"),
    "name": Field(text),
    "kind": Field(text, required=True),
    "environment": Field(one_of(*ENVIRONMENTS)),
    "gate": Field(text),
    "timeout": Field(duration(None), required=True),  # its limit depends on the kind: timeout_limit_s
    "optional": Field(boolean),
    "params": Field(mapping),
}
REPOSITORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")  # GitHub's owner/name


def repository(value: Any) -> str | None:
    if isinstance(value, str) and REPOSITORY.match(value):
        return None
    return f"must be a GitHub repository 'owner/name', got {value!r}"


TOP_FIELDS: dict[str, Field] = {
    "name": Field(text),
    "image": Field(text),
    # The repositories whose pushes release this pipeline (on_push maps each to one file).
    "repositories": Field(list_of(repository, "repositories")),
    "stages": Field(lambda v: None if isinstance(v, list) and v else "must be a non-empty list", required=True),
}
COMMON_PARAMS: dict[str, Field] = {}
PARAMS: dict[str, dict[str, Field]] = {
    "build": {
        "steps": Field(list_of(step, "steps", 1), required=True),
        "images": Field(list_of(text, "image names")),
        "substitutions": Field(scalar_mapping),
        "record_runtime": Field(boolean),
        # what Cloud Build needs to run the stage for real (shared/domain/build_params.py checks them)
        "source": Field(lambda v: None if v == "git" or isinstance(v, Mapping)
                        else f"must be 'git' or a mapping with url or connected_repository (and revision, dir), "
                             f"got {v!r}"),
        "available_secrets": Field(scalar_mapping),
        "service_account": Field(text),
        "logging": Field(text),
        # the chaos verdict's criteria (read by shared/domain/chaos.py through the step args)
        "artifacts": Field(mapping),
        "max_error_rate": Field(number(0, 1)),
        "max_p95_ms": Field(number(1, 600_000)),
    },
    "job": {
        "job": Field(text, required=True),
        "args": Field(list_of(lambda v: None if isinstance(v, (str, int, float)) else f"must be text, got {v!r}",
                              "arguments")),
        "env": Field(scalar_mapping),
        "secrets": Field(scalar_mapping),
        "container": Field(text),
    },
    "deploy": {
        "services": Field(list_of(text, "service names", 1), required=True),
        "traffic_percent": Field(integer(1, 100), required=True),
        # services that serve no requests (workers): rolled in the same stage, 100 % at once
        "background_services": Field(list_of(text, "service names")),
        "revision_tag": Field(text),
        "env": Field(scalar_mapping),
        "secrets": Field(scalar_mapping),
    },
    "traffic": {
        "services": Field(list_of(text, "service names", 1), required=True),
        "percent": Field(integer(1, 100), required=True),
        "revision_tag": Field(text),
    },
    "check": {
        "target": Field(one_of(*CHECK_TARGETS), required=True),
        "paths": Field(list_of(lambda v: None if isinstance(v, str) and v.startswith("/")
                               else f"must be a path starting with '/', got {v!r}", "paths", 1), required=True),
        "service": Field(text),
        "url": Field(lambda v: None if isinstance(v, str) and v.startswith(("http://", "https://"))
                     else f"must be an http(s) URL, got {v!r}"),
        "revision_tag": Field(text),
        # A service that requires authentication: GETs carry a Google ID token of the account the
        # checks run as, audience the service's URL (or ``audience``); deploy/ grants it run.invoker.
        "auth": Field(one_of("none", "id_token")),
        "audience": Field(lambda v: None if isinstance(v, str) and v.startswith(("http://", "https://"))
                          else f"must be an http(s) URL, got {v!r}"),
        # Checks run as scheduled probes (shared/domain/probes.py): bounded by the stage's timeout only.
        "window": Field(duration(MAX_STAGE_TIMEOUT_S)),
        "bake": Field(duration(MAX_STAGE_TIMEOUT_S)),
        "probe_interval": Field(duration(3600)),
        "analysis": Field(mapping),  # the QA checklist: its fields are ANALYSIS_FIELDS
    },
    "approval": {
        "approvers": Field(list_of(text, "e-mail addresses", 1), required=True),
        "expiry_s": Field(integer(60, MAX_APPROVAL_TIMEOUT_S)),
    },
    "preflight": {
        "service_account": Field(text, required=True),
        "project": Field(text),
        "secrets": Field(scalar_mapping),
    },
}

# Cloud Logging's LogSeverity, in order (google/logging/type/log_severity.proto); the analysis compares positions.
SEVERITIES = ("DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY")


def severity(value: Any) -> str | None:
    return None if value in SEVERITIES else f"{value!r} is not a Cloud Logging severity ({', '.join(SEVERITIES)})"


def regex(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be a non-empty regular expression, got {value!r}"
    try:
        re.compile(value)
    except re.error as exc:
        return f"{value!r} is not a valid regular expression ({exc})"
    return None


# params.analysis of a check stage: the QA checklist the canary analysis judges by
# (shared/domain/analysis.py, Criteria). Metrics come per minute, so a window under 60 s sees nothing.
ANALYSIS_FIELDS: dict[str, Field] = {
    "window": Field(duration(6 * 3600)),
    "interval": Field(duration(3600)),
    "max_extension": Field(duration(6 * 3600)),
    "min_requests": Field(integer(1, 1_000_000)),
    "max_5xx_ratio": Field(number(0, 1)),
    "p95_limit_ms": Field(number(1, 600_000)),
    "max_latency_ratio": Field(number(1, 100)),
    "min_latency_delta_ms": Field(number(0, 600_000)),
    "log_severity": Field(severity),
    "log_patterns": Field(list_of(regex, "regular expressions")),
    "max_error_logs_per_min": Field(number(0, 1_000_000)),
    "confidence": Field(number(0.5, 0.9999)),
}


def timeout_limit_s(kind: str) -> int:
    return MAX_APPROVAL_TIMEOUT_S if kind == "approval" else MAX_STAGE_TIMEOUT_S


# --- applying the tables ---------------------------------------------------------------------

def suggestion(name: str, known: Any) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_fields(raw: Mapping[str, Any], fields: Mapping[str, Field], path: Path, where: str,
                 prefix: str = "") -> None:
    """Raise ``Invalid`` for the first unknown, missing or ill-typed field of ``raw``."""
    for key in raw:
        if key not in fields:
            raise Invalid(path + (key,), f"{where}{prefix}{key}: unknown field{suggestion(key, fields)}")
    for key, field in fields.items():
        value = raw.get(key)
        if value is None:
            if field.required:
                raise Invalid(path + (key,) if key in raw else path, f"{where}{prefix}{key}: missing (required)")
            continue
        problem = field.check(value)
        if problem:
            raise Invalid(path + (key,), f"{where}{prefix}{key}: {problem}")


def check_placeholders(value: Any, path: Path, where: str, field: str) -> None:
    """Every lower-case ``${name}`` must be one the executors fill (a typo would ship as text)."""
    known = PLACEHOLDERS + EXTRA_PLACEHOLDERS
    if isinstance(value, str):
        for match in _OUR_PLACEHOLDER.finditer(value):
            name = match.group(1)
            if name is not None and name not in known:
                raise Invalid(path, f"{where}{field}: unknown placeholder ${{{name}}}{suggestion(name, known)};"
                                    f" known: {', '.join('${' + k + '}' for k in known)}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_placeholders(item, path + (key,), where, f"{field}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_placeholders(item, path + (i,), where, f"{field}[{i}]")
