"""The pipeline definition: an ordered list of stages, each of exactly one kind.

Loaded once from YAML into frozen objects. Validation (the field tables are in
``pipeline_schema``) reports the first problem as one line,
``file:line: stage 'staging-migrate': kind: unknown kind 'jbo' (did you mean 'job'?)``,
so that a broken file is fixed at the line it names. A release records ``Pipeline.digest`` so an
edit of the file in the middle of a release is noticed.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from shared.domain import pipeline_schema as schema
from shared.domain.build_params import check_build_params
from shared.domain.errors import ConfigError, DefinitionError
from shared.domain import pipeline_order
from shared.domain.pipeline_schema import Invalid


class StageKind(str, Enum):
    BUILD = "build"  # a Cloud Build build
    JOB = "job"  # a Cloud Run job execution
    DEPLOY = "deploy"  # a Cloud Run service update (new revision)
    TRAFFIC = "traffic"  # a Cloud Run traffic change
    CHECK = "check"  # HTTP checks against a deployed URL
    APPROVAL = "approval"  # a human decision through a signed link
    PREFLIGHT = "preflight"  # the pipeline's own IAM check before stage 1 (seed step 3)


ENVIRONMENTS = schema.ENVIRONMENTS
STAGE_ID = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DEFAULT_CHECK_WINDOW_S = 60


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists again, for JSON, Firestore and the client libraries."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def check_duration_s(params: Mapping[str, Any], where: str) -> int:
    """The longest a check stage runs: its retry window plus its bake time."""
    window = parse_duration(params.get("window", DEFAULT_CHECK_WINDOW_S), where)
    return window + (parse_duration(params["bake"], where) if params.get("bake") else 0)


def parse_duration(value: Any, where: str) -> int:
    """Seconds from ``90``, ``"90s"``, ``"15m"`` or ``"2h"``."""
    seconds = schema.duration_s(value)
    if seconds is None:
        raise DefinitionError(f"{where}: {value!r} is not a positive duration like 90s, 15m or 2h")
    return seconds


@dataclass(frozen=True)
class Stage:
    id: str
    number: str  # the seed's numbering: "1" … "15", "10a"
    name: str
    kind: StageKind
    environment: str
    gate: str  # what a failure of this stage blocks, in words
    timeout_s: int
    optional: bool  # runs only when asked for (the chaos smoke)
    params: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"stage {self.number} '{self.id}'"


@dataclass(frozen=True)
class Pipeline:
    name: str
    image: str  # image name in the registry; executors add registry and tag
    stages: tuple[Stage, ...]
    digest: str  # sha256 of the canonical definition
    document: Mapping[str, Any]  # the parsed file, stored with releases that use it
    repositories: tuple[str, ...] = ()  # whose pushes release it, case-folded (GitHub names are)

    def index(self, stage_id: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.id == stage_id:
                return i
        raise KeyError(stage_id)

    def stage(self, stage_id: str) -> Stage:
        return self.stages[self.index(stage_id)]

    def has_stage(self, stage_id: str) -> bool:
        return any(s.id == stage_id for s in self.stages)

    @property
    def approval_index(self) -> int | None:
        """Index of the approval stage; every stage after it needs a valid approval."""
        for i, stage in enumerate(self.stages):
            if stage.kind is StageKind.APPROVAL:
                return i
        return None

    def services_in(self, environment: str) -> tuple[str, ...]:
        """The Cloud Run services this pipeline changes in ``environment`` (deploys, their
        background services, traffic changes), sorted: the order their locks are taken in."""
        names: set[str] = set()
        for stage in self.stages:
            if stage.environment == environment and stage.kind in (StageKind.DEPLOY, StageKind.TRAFFIC):
                names.update(stage.params.get("services") or ())
                names.update(stage.params.get("background_services") or ())
        return tuple(sorted(names))

    def needs_approval(self, stage_id: str) -> bool:
        gate = self.approval_index
        return gate is not None and self.index(stage_id) > gate


def _stage(raw: Any, position: int) -> Stage:
    path: schema.Path = ("stages", position - 1)
    if not isinstance(raw, Mapping):
        raise Invalid(path, f"stage {position}: expected a mapping, got {type(raw).__name__}")
    stage_id = raw.get("id")
    if not isinstance(stage_id, str) or not STAGE_ID.match(stage_id):
        what = "missing (required)" if stage_id is None else f"{stage_id!r} must be lower-case letters, digits and '-' (max 40)"
        raise Invalid(path + ("id",) if "id" in raw else path, f"stage {position}: id: {what}")
    where = f"stage '{stage_id}': "
    schema.check_fields(raw, schema.STAGE_FIELDS, path, where)
    try:
        kind = StageKind(raw["kind"])
    except ValueError:
        kinds = ", ".join(k.value for k in StageKind)
        raise Invalid(path + ("kind",), f"{where}kind: unknown kind {raw['kind']!r}"
                                        f"{schema.suggestion(raw['kind'], [k.value for k in StageKind])} (one of {kinds})") from None
    params = raw.get("params") or {}
    known = {**schema.COMMON_PARAMS, **schema.PARAMS[kind.value]}
    schema.check_fields(params, known, path + ("params",), where, prefix="params.")
    schema.check_placeholders(params, path + ("params",), where, "params")
    if kind is StageKind.BUILD:
        check_build_params(params, path + ("params",), where)
    timeout_s = schema.duration_s(raw["timeout"]) or 0
    problem = schema.duration(schema.timeout_limit_s(kind.value))(raw["timeout"])
    if problem:
        raise Invalid(path + ("timeout",), f"{where}timeout: {problem}")
    if kind is StageKind.CHECK and params.get("analysis") is not None:
        _check_analysis(params, path + ("params",), where, timeout_s)
    if kind is StageKind.CHECK:
        # Checks run as scheduled probes (shared/domain/probes.py); the stage's timeout
        # ends them, so it must leave room for the whole window and bake.
        needed = check_duration_s(params, where)
        if needed > timeout_s:
            raise Invalid(path + ("params", "bake" if params.get("bake") else "window"),
                          f"{where}params.bake: params.window + params.bake is {needed}s, longer than the timeout "
                          f"({timeout_s}s)")
    return Stage(
        id=stage_id,
        number=str(raw.get("number", position)),
        name=str(raw.get("name", stage_id)),
        kind=kind,
        environment=str(raw.get("environment", "build")),
        gate=str(raw.get("gate", "")),
        timeout_s=timeout_s,
        optional=bool(raw.get("optional", False)),
        params=_freeze(params),
    )


def _check_analysis(params: Mapping[str, Any], path: schema.Path, where: str, timeout_s: int) -> None:
    """The QA checklist of a check stage: its fields, and the rules that join them."""
    analysis = params["analysis"]
    schema.check_fields(analysis, schema.ANALYSIS_FIELDS, path + ("analysis",), where, prefix="params.analysis.")
    if not params.get("service"):
        raise Invalid(path + ("analysis",), f"{where}params.analysis: needs params.service, whose revisions it judges")
    if not params.get("bake"):
        raise Invalid(path + ("analysis",), f"{where}params.analysis: needs params.bake, the time over which the"
                                            " telemetry is judged (an inconclusive check without one would pass silently)")
    longest = check_duration_s(params, where) + (schema.duration_s(analysis.get("max_extension", 300)) or 0)
    if longest > timeout_s:
        raise Invalid(path + ("analysis", "max_extension"),
                      f"{where}params.analysis.max_extension: window + bake + max_extension is {longest}s, longer"
                      f" than the stage's timeout of {timeout_s}s; the extension would be cut off")
    window = schema.duration_s(analysis.get("window", 300)) or 0
    interval = schema.duration_s(analysis.get("interval", 60)) or 0
    if interval > window:
        raise Invalid(path + ("analysis", "interval"),
                      f"{where}params.analysis.interval: {interval}s is longer than the window of {window}s;"
                      " telemetry between two looks would never be judged")


def parse_pipeline(document: Any) -> Pipeline:
    """Validate a parsed YAML document and build the frozen pipeline.

    Raises ``Invalid`` (a ``DefinitionError``) for the first problem, as
    ``stage 'x': field: problem``; ``load_pipeline`` puts ``file:line:`` in front.
    """
    if not isinstance(document, Mapping):
        raise Invalid((), "pipeline: the file must hold a mapping with 'name' and 'stages'")
    schema.check_fields(document, schema.TOP_FIELDS, (), "pipeline: ")
    stages = tuple(_stage(raw, i + 1) for i, raw in enumerate(document["stages"]))
    seen: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.id in seen:
            raise Invalid(("stages", i, "id"), f"stage '{stage.id}': id: used twice")
        seen.add(stage.id)
    approvals = [i for i, s in enumerate(stages) if s.kind is StageKind.APPROVAL]
    if len(approvals) > 1:
        raise Invalid(("stages", approvals[1], "kind"), f"stage '{stages[approvals[1]].id}': kind: only one approval stage is allowed")
    if stages[0].optional:
        raise Invalid(("stages", 0, "optional"), f"stage '{stages[0].id}': optional: the first stage cannot be optional")
    for i, stage in enumerate(stages):
        if stage.optional and stage.kind is StageKind.APPROVAL:
            raise Invalid(("stages", i, "optional"), f"stage '{stage.id}': optional: an approval cannot be optional")
        if stage.optional and approvals and i > approvals[0]:
            raise Invalid(("stages", i, "optional"), f"stage '{stage.id}': optional: optional stages must come before the approval")
    pipeline_order.check_order(stages)
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return Pipeline(
        name=str(document.get("name", "pipeline")),
        image=str(document.get("image", document.get("name", "app"))),
        stages=stages,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
        document=_freeze(document),
        repositories=tuple(r.casefold() for r in document.get("repositories") or ()),
    )


# The stored form of a pinned definition (``pipelines/{digest}``): 1 = no ``schema`` field (as
# written until 2026-11-30), 2 = the same plus ``schema``. A newer code reads every older one.
PIPELINE_SCHEMA = 2


def stored_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """What a store keeps for a pinned definition."""
    return {"name": pipeline.name, "schema": PIPELINE_SCHEMA,
            "document": json.dumps(thaw(pipeline.document), sort_keys=True)}


def pipeline_from_stored(stored: Mapping[str, Any]) -> Pipeline:
    """The pinned definition back, from any schema up to this code's. A newer one is a
    ConfigError (the operator must deploy the newer code; the event is redelivered meanwhile)."""
    version = stored.get("schema", 1)
    if not isinstance(version, int) or version > PIPELINE_SCHEMA:
        raise ConfigError(f"stored pipeline {stored.get('name', '?')!r} has schema {version!r}; this code reads "
                          f"up to {PIPELINE_SCHEMA}: deploy the code that wrote it")
    return parse_pipeline(json.loads(stored["document"]))


def _lines(node: Any, path: schema.Path = (), into: dict | None = None) -> dict:
    """Path of every value in a composed YAML tree -> its 1-based line (keys: the key's line)."""
    import yaml

    into = {} if into is None else into
    into.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            into[path + (key.value,)] = key.start_mark.line + 1
            _lines(value, path + (key.value,), into)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            into[path + (i,)] = item.start_mark.line + 1
            _lines(item, path + (i,), into)
    return into


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a pipeline file; every error is one line ``file:line: problem``."""
    import yaml  # here, not at the top: only reading a file needs it (cold start of dispatch)

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DefinitionError(f"pipeline file {path}: {exc.strerror}") from None
    # The C loader when libyaml is there: same safe subset, a fifth of the parse time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DefinitionError(f"{path}:{line} not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    try:
        return parse_pipeline(document)
    except Invalid as exc:
        lines = _lines(node) if node is not None else {}
        where = exc.path
        while where and where not in lines:
            where = where[:-1]
        line = lines.get(where)
        raise DefinitionError(f"{path}:{line}: {exc}" if line else f"{path}: {exc}") from None
