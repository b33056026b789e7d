"""What runs where: per application and environment, each service's serving revisions with their
version, commit, image, share, since when and which release put them there.

One function, ``what_runs_where``, answers it for `relctl where` (and, later, the dashboard and
the approval page's "Production runs"): the Cloud Run API says what serves now (port
``ServiceReader``), the release records say which release deployed each revision and when. When
issue 24's per-service revision history lands, ``deployed_by`` reads it instead of scanning releases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from shared.app.ports import ServiceReader, ServingRevision
from shared.domain.pipeline import Pipeline, StageKind
from shared.domain.stage_results import results_of
from shared.domain.state import ReleaseState


@dataclass(frozen=True)
class Placement:
    environment: str
    service: str
    serving: ServingRevision
    release_id: str = ""  # the release whose deploy stage made this revision ("" if none we know)
    stage: str = ""
    since: float | None = None  # when that stage finished (else the revision's create time)


def environments(pipeline: Pipeline) -> dict[str, list[str]]:
    """Environment -> the services its deploy stages deploy, in pipeline order."""
    found: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        if stage.kind is StageKind.DEPLOY and stage.environment:
            for service in [*stage.params.get("services", ()), *(stage.params.get("background_services") or ())]:
                if str(service) not in found.setdefault(stage.environment, []):
                    found[stage.environment].append(str(service))
    return found


def deployed_by(pipeline: Pipeline, releases: Iterable[ReleaseState], service: str,
                revision: str) -> tuple[str, str, float | None]:
    """(release id, stage, finished at) of the release whose deploy or traffic stage made ``revision``
    of ``service`` (the newest such release first)."""
    for state in sorted(releases, key=lambda s: s.created_at, reverse=True):
        for stage in pipeline.stages:
            st = state.stages.get(stage.id)
            if st is None or stage.kind not in (StageKind.DEPLOY, StageKind.TRAFFIC):
                continue
            for result in results_of(stage.kind, st):
                if any(t.service == service and t.revision == revision for t in getattr(result, "revisions", ())):
                    return state.release_id, stage.id, st.finished_at
    return "", "", None


def what_runs_where(pipeline: Pipeline, reader: ServiceReader, releases: Iterable[ReleaseState]) -> list[Placement]:
    """Every serving revision of the application's services, by environment in pipeline order."""
    releases = [r for r in releases if r.pipeline_name == pipeline.name]
    placements = []
    for environment, services in environments(pipeline).items():
        for service in services:
            for serving in sorted(reader.serving(service), key=lambda s: -s.percent):
                release_id, stage, since = deployed_by(pipeline, releases, service, serving.revision)
                placements.append(Placement(environment, service, serving, release_id, stage,
                                            since if since is not None else serving.created_at))
    return placements


def prod_runs_text(placements: Iterable[Placement]) -> str:
    """The approval page's "Production runs": what each prod service serves now, with its share."""
    prod = [p for p in placements if p.environment == "prod" and p.serving.percent > 0]
    if not prod:
        return "nothing serves in prod yet"
    return "; ".join(f"{p.service}: {p.serving.percent} % version {p.serving.version or '?'} "
                     f"(commit {p.serving.commit or '?'}" + (f", release {p.release_id}" if p.release_id else "") + ")"
                     for p in prod)
