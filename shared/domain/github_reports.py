"""What GitHub should show of a release: deployments, their statuses and one commit status.

A pure function of the release's state (no clock, no client): ``reports_for`` lists, in the order
they must reach GitHub, every call the release's progress so far implies. Each has a stable ``key``;
the reporter (shared/app/github_reporting.py) sends those whose key it has not recorded yet, so the
state itself is the outbox: a lost call is sent by the next sync, and a redelivered event sends
nothing twice.

- A deployment per environment that has Cloud Run services (``Pipeline.services_in``), named as in
  the pipeline file: staging once its first stage started, prod once the approval was given.
  ``auto_merge`` off and ``required_contexts`` empty: the release already gated the commit.
- Its statuses follow the environment's stages: ``queued`` at creation, ``in_progress`` when a stage
  of it runs (again after a replay), then ``success``, ``failure`` (a stage failed: its reason),
  ``error`` (cancelled or stopped for another cause) or ``inactive`` (superseded). A release that
  ends leaves no deployment ``in_progress``.
- One commit status, context ``release/<application>``: ``pending`` while it runs or waits for
  approval, ``success`` when prod serves it, ``failure``/``error`` otherwise.

Descriptions are one line, at most 140 characters (GitHub's limit for a deployment status,
docs.github.com/en/rest/deployments/statuses#create-a-deployment-status), for any text.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from shared.domain.pipeline import Pipeline, StageKind
from shared.domain.stage_results import result_of
from shared.domain.state import ReleaseState, ReleaseStatus, StageState, StageStatus

MAX_DESCRIPTION = 140
DEPLOYMENT_STATES = ("error", "failure", "inactive", "in_progress", "queued", "pending", "success")
COMMIT_STATES = ("error", "failure", "pending", "success")
ELLIPSIS = "…"


@dataclass(frozen=True)
class CreateDeployment:
    key: str
    environment: str
    ref: str  # the pushed commit's sha
    description: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    production_environment: bool = False

    def body(self) -> dict[str, Any]:
        return {"ref": self.ref, "environment": self.environment, "auto_merge": False, "required_contexts": [],
                "description": self.description, "payload": dict(self.payload), "task": "deploy",
                "production_environment": self.production_environment, "transient_environment": False}


@dataclass(frozen=True)
class DeploymentStatus:
    key: str
    environment: str  # which deployment (its id is the reporter's record)
    state: str
    description: str
    log_url: str = ""
    environment_url: str = ""

    def body(self) -> dict[str, Any]:
        body = {"state": self.state, "description": self.description, "auto_inactive": False}
        if self.log_url:
            body["log_url"] = self.log_url
        if self.environment_url:
            body["environment_url"] = self.environment_url
        return body


@dataclass(frozen=True)
class CommitStatus:
    key: str
    sha: str
    state: str
    description: str
    context: str
    target_url: str = ""

    def body(self) -> dict[str, Any]:
        body = {"state": self.state, "description": self.description, "context": self.context}
        if self.target_url:
            body["target_url"] = self.target_url
        return body


Report = Union[CreateDeployment, DeploymentStatus, CommitStatus]


def one_line(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """``text`` as one printable line of at most ``limit`` characters (code points, as GitHub counts).

    Control and format characters become spaces, lone surrogates (not encodable as UTF-8) become
    U+FFFD, runs of whitespace one space; a cut ends in "…" and never splits a base character from
    its combining marks."""
    chars = []
    for ch in str(text):
        category = unicodedata.category(ch)
        if category == "Cs":
            chars.append("\ufffd")
        elif category in ("Cc", "Cf", "Zl", "Zp") or ch.isspace():
            chars.append(" ")
        else:
            chars.append(ch)
    line = " ".join("".join(chars).split())
    if len(line) <= limit:
        return line
    cut = limit - len(ELLIPSIS)
    while cut > 0 and unicodedata.combining(line[cut]):
        cut -= 1  # keep a letter with its accents
    return line[:cut].rstrip() + ELLIPSIS


def dashboard_link(dashboard_url: str, release_id: str) -> str:
    return f"{dashboard_url.rstrip('/')}/release/{release_id}" if dashboard_url else ""


def reported_environments(pipeline: Pipeline) -> tuple[str, ...]:
    """Environments that get a deployment: those the pipeline changes Cloud Run services in."""
    return tuple(env for env in dict.fromkeys(s.environment for s in pipeline.stages) if pipeline.services_in(env))


def reports_for(pipeline: Pipeline, state: ReleaseState, dashboard_url: str = "") -> tuple[Report, ...]:
    """Every GitHub call the release's state implies so far, in the order they must be sent."""
    log_url = dashboard_link(dashboard_url, state.release_id)
    reports: list[Report] = []
    context = f"release/{pipeline.name}"
    for env in reported_environments(pipeline):
        reports.extend(_environment(pipeline, state, env, log_url))
    reports.extend(_commit_statuses(pipeline, state, context, log_url))
    return tuple(reports)


def _stages_in(pipeline: Pipeline, state: ReleaseState, env: str) -> list[tuple[Any, StageState]]:
    return [(s, state.stages[s.id]) for s in pipeline.stages
            if s.environment == env and s.kind is not StageKind.APPROVAL and s.id in state.stages]


def _approved(pipeline: Pipeline, state: ReleaseState) -> bool:
    gate = pipeline.approval_index
    if gate is None:
        return True
    st = state.stages.get(pipeline.stages[gate].id)
    return st is not None and st.status is StageStatus.SUCCEEDED


def _environment(pipeline: Pipeline, state: ReleaseState, env: str, log_url: str) -> list[Report]:
    stages = _stages_in(pipeline, state, env)
    begun = [st for _, st in stages if st.status not in (StageStatus.PENDING, StageStatus.SKIPPED)]
    if not begun or (pipeline.needs_approval(stages[0][0].id) and not _approved(pipeline, state)):
        return []
    url = _service_url(pipeline, state, env)
    out: list[Report] = [
        CreateDeployment(f"{env}/deployment", env, state.commit, one_line(f"{state.tag}: release {state.release_id}"),
                         {"release_id": state.release_id, "version": state.version},
                         production_environment=env == "prod"),
        DeploymentStatus(f"{env}/queued", env, "queued", one_line(f"{state.tag} queued for {env}"), log_url),
    ]
    # One in_progress per round: a replay after a failure starts a new one.
    rounds = max((st.attempt for _, st in stages), default=1) or 1
    running = any(st.status in (StageStatus.RUNNING, StageStatus.SUCCEEDED, StageStatus.FAILED) for st in begun)
    failed = next(((s, st) for s, st in stages if st.status is StageStatus.FAILED), None)
    for n in range(1, rounds + 1):
        if running:
            out.append(DeploymentStatus(f"{env}/in_progress/{n}", env, "in_progress",
                                        one_line(f"{state.tag} deploying to {env}"), log_url, url))
        if n < rounds:  # an earlier round ended in a failure that a replay followed
            out.append(DeploymentStatus(f"{env}/failure/{n}", env, "failure",
                                        one_line(f"{state.tag} failed in {env}; replayed"), log_url, url))
    ended = _end_of(pipeline, state, env, stages, failed)
    if ended is not None:
        kind, text = ended
        out.append(DeploymentStatus(f"{env}/{kind}/{rounds}", env, kind, one_line(text), log_url, url))
    return out


def _end_of(pipeline: Pipeline, state: ReleaseState, env: str, stages: list, failed: Any) -> tuple[str, str] | None:
    # An optional stage nobody asked for (the chaos smoke) stays pending and holds nothing.
    if all(st.status in (StageStatus.SUCCEEDED, StageStatus.SKIPPED)
           or (stage.optional and st.status is StageStatus.PENDING) for stage, st in stages):
        return "success", f"{state.tag} deployed to {env}"
    if failed is not None and state.status is ReleaseStatus.STOPPED:
        stage, st = failed
        return "failure", f"{stage.name} failed: {st.reason or state.reason or 'no reason given'}"
    if state.status is ReleaseStatus.CANCELLED:
        return "error", f"cancelled: {state.reason or 'by an operator'}"
    if state.status is ReleaseStatus.SUPERSEDED:
        return "inactive", f"superseded by {state.superseded_by or 'a newer release'}"
    if state.status is ReleaseStatus.STOPPED or state.status.terminal:
        return "error", f"stopped: {state.reason or 'no reason given'}"
    return None


def _commit_statuses(pipeline: Pipeline, state: ReleaseState, context: str, log_url: str) -> list[Report]:
    def status(key: str, kind: str, text: str) -> CommitStatus:
        return CommitStatus(f"commit/{key}", state.commit, kind, one_line(text), context, log_url)

    out: list[Report] = [status("pending/started", "pending", f"{state.tag} on its way to prod")]
    gate = pipeline.approval_index
    if gate is not None and state.stages.get(pipeline.stages[gate].id, StageState()).status in (
            StageStatus.WAITING, StageStatus.SUCCEEDED, StageStatus.FAILED):
        approvers = ", ".join(str(a) for a in (pipeline.stages[gate].params.get("approvers") or ())) or "an approver"
        out.append(status("pending/approval", "pending", f"waiting for approval by {approvers}"))
    if state.status is ReleaseStatus.SUCCEEDED:
        out.append(status("success", "success", f"{state.tag} serving 100 % in prod"))
    elif state.status is ReleaseStatus.STOPPED:
        stage = next((s for s in pipeline.stages if state.stages.get(s.id, StageState()).status is StageStatus.FAILED),
                     None)
        reason = state.stages[stage.id].reason if stage is not None else ""
        text = f"{stage.name}: {reason or state.reason}" if stage is not None else state.reason
        # Keyed by the text: a stop after a replay is a new failure, the same stop redelivered is not.
        out.append(status(f"failure/{_digest(text)}", "failure", text or "stopped"))
    elif state.status is ReleaseStatus.CANCELLED:
        out.append(status("error/cancelled", "error", f"cancelled: {state.reason or 'by an operator'}"))
    elif state.status is ReleaseStatus.SUPERSEDED:
        out.append(status("error/superseded", "error", f"superseded by {state.superseded_by or 'a newer release'}"))
    return out


def _service_url(pipeline: Pipeline, state: ReleaseState, env: str) -> str:
    """The service URL the environment's last finished deploy reported."""
    url = ""
    for stage in pipeline.stages:
        if stage.environment == env and stage.kind is StageKind.DEPLOY and stage.id in state.stages:
            result = result_of(stage.kind, state.stages[stage.id].result)
            url = next((u for _, u in getattr(result, "urls", ())), url)
    return url


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]
