"""The pipeline definition: an ordered list of stages, each of exactly one kind.

Loaded once from YAML into frozen objects. Validation messages point at the stage
and field (``stage 7 'staging-migrate': unknown kind 'jbo'``) so that a broken
file is fixed at the line it names. A release records ``Pipeline.digest`` so an
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

from shared.domain.errors import DefinitionError


class StageKind(str, Enum):
    BUILD = "build"  # a Cloud Build build
    JOB = "job"  # a Cloud Run job execution
    DEPLOY = "deploy"  # a Cloud Run service update (new revision)
    TRAFFIC = "traffic"  # a Cloud Run traffic change
    CHECK = "check"  # HTTP checks against a deployed URL
    APPROVAL = "approval"  # a human decision through a signed link
    PREFLIGHT = "preflight"  # the pipeline's own IAM check before stage 1 (seed step 3)


# Parameters each kind cannot do without; the executors read the rest.
REQUIRED_PARAMS: Mapping[StageKind, tuple[str, ...]] = {
    StageKind.BUILD: ("steps",),
    StageKind.JOB: ("job",),
    StageKind.DEPLOY: ("services", "traffic_percent"),
    StageKind.TRAFFIC: ("services", "percent"),
    StageKind.CHECK: ("target", "paths"),
    StageKind.APPROVAL: ("approvers",),
    StageKind.PREFLIGHT: ("service_account",),
}
ENVIRONMENTS = ("build", "staging", "prod")
STAGE_ID = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DURATION = re.compile(r"^(\d+)\s*([smh]?)$")
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
    match = DURATION.match(str(value).strip())
    if not match or int(match.group(1)) <= 0:
        raise DefinitionError(f"{where}: timeout {value!r} is not a positive duration like 90s, 15m or 2h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


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

    def needs_approval(self, stage_id: str) -> bool:
        gate = self.approval_index
        return gate is not None and self.index(stage_id) > gate


def _stage(raw: Any, position: int) -> Stage:
    where = f"stage {position}"
    if not isinstance(raw, Mapping):
        raise DefinitionError(f"{where}: expected a mapping, got {type(raw).__name__}")
    number = str(raw.get("number", position))
    stage_id = raw.get("id")
    where = f"stage {number}"
    if not isinstance(stage_id, str) or not STAGE_ID.match(stage_id):
        raise DefinitionError(f"{where}: id {stage_id!r} must be lower-case letters, digits and '-' (max 40)")
    where = f"stage {number} '{stage_id}'"
    unknown = set(raw) - {"id", "number", "name", "kind", "environment", "gate", "timeout", "optional", "params"}
    if unknown:
        raise DefinitionError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    kind_text = raw.get("kind")
    try:
        kind = StageKind(kind_text)
    except ValueError:
        kinds = ", ".join(k.value for k in StageKind)
        raise DefinitionError(f"{where}: unknown kind {kind_text!r} (one of {kinds})") from None
    environment = raw.get("environment", "build")
    if environment not in ENVIRONMENTS:
        raise DefinitionError(f"{where}: environment {environment!r} is not one of {', '.join(ENVIRONMENTS)}")
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise DefinitionError(f"{where}: params must be a mapping")
    for key in REQUIRED_PARAMS[kind]:
        if params.get(key) in (None, "", [], {}):
            raise DefinitionError(f"{where}: kind {kind.value} needs params.{key}")
    for key in ("traffic_percent", "percent"):
        if key in params and not (isinstance(params[key], int) and 0 < params[key] <= 100):
            raise DefinitionError(f"{where}: params.{key} must be an integer from 1 to 100, got {params[key]!r}")
    if "timeout" not in raw:
        raise DefinitionError(f"{where}: timeout is required")
    if kind is StageKind.CHECK:
        # Checks run as scheduled probes (shared/domain/probes.py); the stage's timeout
        # ends them, so it must leave room for the whole window and bake.
        needed = check_duration_s(params, where)
        if needed > parse_duration(raw["timeout"], where):
            raise DefinitionError(f"{where}: params.window + params.bake is {needed}s, longer than the timeout")
        if params.get("probe_interval") is not None and parse_duration(params["probe_interval"], where) < 1:
            raise DefinitionError(f"{where}: params.probe_interval must be at least 1s")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise DefinitionError(f"{where}: optional must be true or false")
    return Stage(
        id=stage_id,
        number=number,
        name=str(raw.get("name", stage_id)),
        kind=kind,
        environment=environment,
        gate=str(raw.get("gate", "")),
        timeout_s=parse_duration(raw["timeout"], where),
        optional=optional,
        params=_freeze(params),
    )


def parse_pipeline(document: Any) -> Pipeline:
    """Validate a parsed YAML document and build the frozen pipeline."""
    if not isinstance(document, Mapping):
        raise DefinitionError("pipeline: the file must hold a mapping with 'name' and 'stages'")
    unknown = set(document) - {"name", "image", "stages"}
    if unknown:
        raise DefinitionError(f"pipeline: unknown top-level field(s) {', '.join(sorted(unknown))}")
    raw_stages = document.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise DefinitionError("pipeline: 'stages' must be a non-empty list")
    stages = tuple(_stage(raw, i + 1) for i, raw in enumerate(raw_stages))
    seen: set[str] = set()
    for stage in stages:
        if stage.id in seen:
            raise DefinitionError(f"{stage.label}: id is used twice")
        seen.add(stage.id)
    approvals = [s for s in stages if s.kind is StageKind.APPROVAL]
    if len(approvals) > 1:
        raise DefinitionError(f"{approvals[1].label}: only one approval stage is allowed")
    if stages[0].optional:
        raise DefinitionError(f"{stages[0].label}: the first stage cannot be optional")
    for stage in stages:
        if stage.optional and stage.kind is StageKind.APPROVAL:
            raise DefinitionError(f"{stage.label}: an approval cannot be optional")
    if approvals:
        gate = stages.index(approvals[0])
        for stage in stages[gate + 1:]:
            if stage.optional:
                raise DefinitionError(f"{stage.label}: optional stages must come before the approval")
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return Pipeline(
        name=str(document.get("name", "pipeline")),
        image=str(document.get("image", document.get("name", "app"))),
        stages=stages,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
        document=_freeze(document),
    )


def load_pipeline(path: str | Path) -> Pipeline:
    import yaml  # here, not at the top: only reading a file needs it (cold start of dispatch)

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DefinitionError(f"pipeline file {path}: {exc.strerror}") from None
    try:
        # The C loader when libyaml is there: same safe subset, a fifth of the parse time.
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise DefinitionError(f"pipeline file {path}: not valid YAML ({exc})") from None
    try:
        return parse_pipeline(document)
    except DefinitionError as exc:
        raise DefinitionError(f"{path}: {exc}") from None
