"""The operator's dashboard: releases and each release drawn as its pipeline.

``handle(method, path, query, store) -> (status, body, headers)`` is the whole
interface, so the Cloud Function entry point is one line::

    status, body, headers = dashboard.handle(request.method, request.path, request.args, bootstrap.store())

Routes (GET/HEAD only): ``/`` the releases, newest first (not refreshed: 50 reads a
time); ``/release/<id>`` one release as a flow of stage boxes that polls the small
``/api/release/<id>/state`` (one read) as often as the release can move, and fetches
``/api/release/<id>`` only when something moved; ``/api/releases`` and
``/api/release/<id>`` the same as JSON.
Links are relative, so the pages work under any URL prefix (a function URL).
Everything from the store is escaped; the refresh script sets only text and
http(s) links. Every stage element carries ``data-stage`` and ``data-status``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
import secrets
import time
import urllib.parse
from typing import Any, Mapping

from shared.app.github_reporting import reporting_text
from shared.app.stage_medians import app_record
from shared.domain.analysis import summary_line
from shared.domain.app_record import AppRecord
from shared.domain.errors import PipelineError
from shared.ui.notes import (
    ReleaseNotFound,
    rollback_lines,
    approval_decision,
    duration_text,
    is_prod_traffic_stage,
    iso,
    junit_counts,
    junit_text,
    live_lines,
    load_release,
    log_link,
    render,
    timeline_text,
    traffic_decisions,
    traffic_percent,
    waiting_text,
)
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.stage_results import BuildResult, CheckResult, result_of
from shared.domain.state import ReleaseState, StageState, StageStatus
from shared.domain.progress import progress, progress_text
from shared.ui.render import markdown_html, page
from shared.ui.templates.dashboard_assets import CSS, REFRESH_JS

Response = tuple[int, str, dict[str, str]]


def handle(method: str, path: str, query: Mapping[str, Any] | None, store: Any, apps: Any = None,
           now: float | None = None, github: Any = None, where: Any = None) -> Response:
    """Answer one dashboard request from the release store; ``apps`` (AppRecords) gives the
    stage medians for the expected end, ``now`` the time (default: the system clock), ``github``
    (the GitHub reports' record, shared/app/ports.py GitHubLedger) what reached GitHub, ``where``
    what runs where (``() -> {app: [Placement]}``, shared/app/where.py; None: the page says it is not wired)."""
    if method not in ("GET", "HEAD"):
        return _error(405, "only GET is served here", api=(path or "").startswith("/api/"), allow="GET, HEAD")
    parts = [urllib.parse.unquote(p) for p in (path or "/").strip("/").split("/") if p]
    api = bool(parts) and parts[0] == "api"
    root = "../" * (len(parts) - 1) if len(parts) > 1 else "./"
    try:
        if not parts:
            return _html(release_list_page(store.list_releases(_limit(query))))
        if parts in (["where"], ["api", "where"]):
            if where is None:
                return _error(404, "what runs where is not wired into this dashboard", api=api, root=root)
            view = where_view(where())
            return _json({"apps": view}) if api else _html(_page("dashboard_where.html", "what runs where", apps=view))
        if parts == ["api", "releases"]:
            return _json({"releases": [release_summary(s) for s in store.list_releases(_limit(query))]})
        if len(parts) == 2 and parts[0] == "release":
            state, pipeline = load_release(store, parts[1])
            nonce = secrets.token_urlsafe(16)
            view = with_github(release_progress(state, pipeline, apps, now), github, state)
            return _html(release_page(state, pipeline, nonce, view), nonce=nonce)
        if len(parts) == 3 and parts[:2] == ["api", "release"]:
            state, pipeline = load_release(store, parts[2])
            return _json(release_json(state, pipeline, with_github(release_progress(state, pipeline, apps, now), github,
                                                                   state)))
        if len(parts) == 4 and parts[:2] == ["api", "release"] and parts[3] == "state":
            state, pipeline = load_release(store, parts[2])  # one read: the definition is cached
            return _json(release_state(state, pipeline))
    except ReleaseNotFound as exc:
        return _error(404, str(exc), api=api, root=root)
    except PipelineError as exc:
        return _error(500, str(exc), api=api, root=root)
    except Exception as exc:  # the store is unreachable: say so instead of a bare 500
        from google.api_core import exceptions as gexc

        if isinstance(exc, gexc.GoogleAPIError):
            return _error(503, f"the release store is unavailable: {type(exc).__name__}", api=api, root=root)
        raise
    return _error(404, f"no page at {path}", api=api, root=root)


def _limit(query: Mapping[str, Any] | None) -> int:
    try:
        return max(1, min(200, int((query or {}).get("limit") or 50)))
    except (TypeError, ValueError):
        return 50


# -- JSON views -------------------------------------------------------------------
def where_view(by_app: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``{app: [Placement]}`` as plain data for the page and /api/where."""
    return [{"app": app, "placements": [{**asdict(p), "since_iso": iso(p.since)} for p in placements]}
            for app, placements in by_app.items()]


def release_summary(state: ReleaseState) -> dict[str, Any]:
    active = (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED)
    current = next((sid for sid, st in state.stages.items() if st.status in active), state.stopped_at_stage)
    return {
        "release_id": state.release_id, "repo": state.repo, "version": state.version, "tag": state.tag,
        "commit": state.commit, "pushed_by": state.pushed_by, "status": state.status.value,
        "terminal": state.status.terminal, "created_at": state.created_at, "updated_at": state.updated_at,
        "current_stage": current, "reason": state.reason, "waiting_for": state.waiting_for,
    }


# How long the release page waits before asking again, by what can move the release:
# its own stages (seconds), a lock or a person (tens of seconds), only a replay (a minute).
REFRESH_AFTER_S = {"running": 2, "queued": 15, "awaiting_approval": 15, "stopped": 60}


def refresh_after_s(state: ReleaseState) -> int | None:
    """Seconds until the page should look again; None once nothing can change it."""
    return None if state.status.terminal else REFRESH_AFTER_S.get(state.status.value, 15)


def release_state(state: ReleaseState, pipeline: Pipeline) -> dict[str, Any]:
    """The small JSON the release page polls (``/api/release/<id>/state``): enough to tell
    whether anything moved (``shape``) and when to ask again; the page fetches the full
    ``/api/release/<id>`` only when the shape changed."""
    return {
        "release_id": state.release_id, "status": state.status.value, "terminal": state.status.terminal,
        "updated_at": state.updated_at, "refresh_after_s": refresh_after_s(state),
        # statuses and attempts in pipeline order, as the page computes it (updated_at alone
        # can repeat within a clock tick)
        "shape": state.status.value + "|" + ",".join(
            f"{st.status.value}:{st.attempt}" for st in (state.stages.get(s.id) or StageState() for s in pipeline.stages)),
    }


def stage_view(stage: Stage, st: StageState, state: ReleaseState, pipeline: Pipeline) -> dict[str, Any]:
    """What a stage box shows, as plain strings the page and the refresh script share."""
    meta = f"attempt {st.attempt}" if st.attempt else "not run"
    if st.duration_s is not None:
        meta += f" · {duration_text(st.duration_s)}"
    return {
        "id": stage.id, "number": stage.number, "name": stage.name, "kind": stage.kind.value,
        "environment": stage.environment, "optional": stage.optional, "status": st.status.value,
        "attempt": st.attempt, "started_at": st.started_at, "finished_at": st.finished_at,
        "duration_s": st.duration_s, "reason": st.reason, "meta": meta,
        "detail": stage_detail(stage, st, state, pipeline),
        "log_url": log_link(result_of(stage.kind, st.result)),
        "traffic_percent": traffic_percent(stage, st) if is_prod_traffic_stage(stage) else None,
        "result": st.result,
    }


def _rolled_back_since(state: ReleaseState, pipeline: Pipeline, since: float | None):
    """The first rollback (the gate's or by hand) recorded on the release after ``since``."""
    later = [r for stage in pipeline.stages if stage.kind is StageKind.DEPLOY
             for r in result_of(stage.kind, state.stages[stage.id].result).rolled_back
             if since is not None and (r.at or 0) >= since]
    return min(later, key=lambda r: r.at or 0) if later else None


def stage_detail(stage: Stage, st: StageState, state: ReleaseState, pipeline: Pipeline) -> str:
    result = result_of(stage.kind, st.result)
    if stage.kind is StageKind.APPROVAL:
        decision = approval_decision(state, pipeline)
        if decision.get("approver") and st.status in (StageStatus.SUCCEEDED, StageStatus.FAILED):
            return f"{decision.get('decision', 'decided')} by {decision['approver']} at {iso(decision.get('at'))}"
        if st.status is StageStatus.WAITING:
            return "waiting for an approver"
    if st.status is StageStatus.QUEUED:
        return f"queued: another release holds {stage.environment}"
    analysis = result.analysis.latest if isinstance(result, CheckResult) and result.analysis else None
    if st.status is StageStatus.FAILED and st.reason:
        reason = st.reason if len(st.reason) <= 160 else st.reason[:157] + "…"
        return reason + (f" ({summary_line(analysis)})" if analysis else "")
    if is_prod_traffic_stage(stage) and st.status is StageStatus.SUCCEEDED:
        undone = _rolled_back_since(state, pipeline, st.finished_at)
        if undone:  # the traffic this stage moved no longer serves: say until when, and where it went
            return (f"{traffic_percent(stage, st)} % traffic from {iso(st.finished_at)} until rolled back at "
                    f"{iso(undone.at)} to {undone.revision or '?'}")
        return f"{traffic_percent(stage, st)} % traffic since {iso(st.finished_at)}"
    counts = junit_counts(result)
    if counts is not None:
        return junit_text(counts)
    if isinstance(result, BuildResult) and result.timed_schema:
        return f"dry run {result.dry_run_ms} ms, apply {result.apply_ms} ms"
    if isinstance(result, CheckResult) and result.checks is not None:
        checks = result.checks
        good = sum(1 for c in checks if c.status is not None and 200 <= c.status < 300)
        latencies = ", ".join(f"{c.path or None} {c.status or c.error or '-'}"
                              + (f" in {c.latency_ms:.0f} ms" if c.latency_ms is not None else "")
                              for c in checks)
        return (f"{good}/{len(checks)} paths answered 2xx" + (f" ({latencies})" if latencies else "")
                + (f"; {summary_line(analysis)}" if analysis else ""))
    chaos = result.chaos if isinstance(result, BuildResult) else None
    if chaos is not None and chaos.error_rate is not None:
        p95 = chaos.p95_ms
        return (f"error rate {chaos.error_rate:.2%}, P95 {p95:.0f} ms" if p95 is not None
                else f"error rate {chaos.error_rate:.2%}") + (" — passed" if chaos.passed else " — failed")
    if stage.optional and st.status is StageStatus.PENDING:
        return "optional: runs when requested"
    return ""


def release_progress(state: ReleaseState, pipeline: Pipeline, apps: Any, now: float | None) -> dict[str, Any]:
    """Elapsed times, the expected end from the app's stage medians, a stall notice (shared/domain/progress.py)."""
    now = time.time() if now is None else now
    record = app_record(apps, state.pipeline_name)
    p = progress(state, pipeline, record.stage_medians, now)
    p["text"] = progress_text(p, duration_text)
    p["stalled_text"] = stalled_text(state, p)
    freeze = record.freeze
    p["freeze_text"] = (f"prod is frozen by {freeze.by or '?'} since {iso(freeze.at)}: "
                        f"{freeze.reason}; no release enters prod until `relctl unfreeze`"
                        if freeze and not state.status.terminal else "")
    p["freeze_events"] = freeze_events(record, state, now)
    p["read_at"] = now  # when the view was read: a bake's elapsed time counts to it
    return p


def freeze_events(record: AppRecord, state: ReleaseState, now: float) -> list[dict[str, Any]]:
    """The application's freezes and unfreezes while this release lived (and a freeze already in
    force when it was created), as timeline entries."""
    end = state.updated_at if state.status.terminal else now
    history = [e for e in record.freeze_history if e.at is not None and e.at <= end]
    before = [e for e in history if e.at < state.created_at]
    shown = ([before[-1]] if before and before[-1].action == "freeze" else []) + [
        e for e in history if e.at >= state.created_at]
    return [{"at": e.at, "kind": "prod " + ("frozen" if e.action == "freeze" else "unfrozen"),
             "by": e.by, "stage": "", "reason": e.reason} for e in shown]


def timeline_with_freezes(state: ReleaseState, p: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The release's timeline with the freezes of its application merged in, by time."""
    merged = list(state.timeline) + list((p or {}).get("freeze_events") or [])
    return sorted(merged, key=lambda e: e.get("at") or 0)


def queued_text(state: ReleaseState, p: Mapping[str, Any] | None) -> str:
    """Why a queued release waits: a freeze of prod, else another release holding the environment."""
    if not state.waiting_for:
        return ""
    if state.waiting_for == "prod" and (p or {}).get("freeze_text"):
        return "queued for prod: prod is frozen (see above), no other release holds it"
    return f"queued: waiting for the {state.waiting_for} lock another release holds"


def with_github(view: dict[str, Any], github: Any, state: ReleaseState) -> dict[str, Any]:
    """The progress view plus what reached GitHub (``github_text``) and where to see it there."""
    if github is None:
        return view
    text = reporting_text(github.get(state.release_id))
    if not text:
        return view
    return {**view, "github_text": text, "github_url": f"https://github.com/{state.repo}/deployments",
            "github_commit_url": f"https://github.com/{state.repo}/commit/{state.commit}"}


def stalled_text(state: ReleaseState, p: Mapping[str, Any]) -> str:
    """The notice for a release that has not moved for longer than its stage's timeout, with what to run."""
    if p.get("stalled_s") is None:
        return ""
    rid, stage = state.release_id, p["stage"]
    return (f"release {rid} has not moved for {duration_text(p['stalled_s'])}, longer than the "
            f"{duration_text(p['timeout_s'])} timeout of {stage}: check the sweeper, then "
            f"`relctl replay {rid} {stage} --reason \"…\"` or `relctl cancel {rid} --reason \"…\"`")


def release_json(state: ReleaseState, pipeline: Pipeline, progress_view: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the release page shows; the refresh script redraws the page from it."""
    decision = {k: v for k, v in approval_decision(state, pipeline).items() if k != "nonce"}
    stages = [stage_view(s, state.stages.get(s.id) or StageState(), state, pipeline) for s in pipeline.stages]
    if (progress_view or {}).get("freeze_text"):
        for view in stages:
            if view["status"] == "queued" and view["environment"] == "prod":
                view["detail"] = "queued: prod is frozen"
    approval_text = "none yet"
    if decision.get("approver"):
        approval_text = (f"{decision.get('decision', 'decided')} by {decision['approver']} at {iso(decision.get('at'))}"
                         + (f" — {decision['reason']}" if decision.get("reason") else ""))
    traffic = [f"{d['percent']} % at {iso(d['at'])} ({d['stage']})"
               + (f", rolled back at {iso(d['rolled_back_at'])}" if d["rolled_back_at"] else "")
               for d in traffic_decisions(state, pipeline)]
    return {
        "release": {**release_summary(state), "ref": state.ref, "stopped_at_stage": state.stopped_at_stage,
                    "pipeline": state.pipeline_name, "chaos_requested_by": state.chaos_requested_by,
                    "approval": decision, "approval_text": approval_text,
                    "traffic_text": "; ".join(traffic + rollback_lines(state, pipeline)) or "no prod traffic yet"},
        "stages": stages,
        "replays": state.replays,
        "timeline": [{**e, "text": timeline_text(e)} for e in timeline_with_freezes(state, progress_view)],
        "waiting_text": waiting_text(state, pipeline),
        # a bake under way and how a waiting approval is given (approve_how), beside the waiting text
        "live_lines": [line for line in live_lines(state, pipeline, (progress_view or {}).get("read_at") or state.updated_at)
                       if line != waiting_text(state, pipeline)],
        "progress": progress_view or {},
        "notes": render(state, pipeline, per_stage=False),  # the page draws every stage already
    }


# -- HTML (Jinja2 templates in shared/ui/templates, autoescaped) -------------------
def _page(template: str, title: str, *, nonce: str = "", script: str = "", refresh_s: int = 0, **values: Any) -> str:
    return page(template, title=title, css=CSS, nonce=nonce, script=script, refresh_s=refresh_s, **values)


def release_list_page(states: list[ReleaseState]) -> str:
    releases = [{**release_summary(s), "created": iso(s.created_at)} for s in states]
    # No refresh of the whole list (50 reads each time): a release's own page follows it.
    return _page("dashboard_list.html", "Releases", releases=releases, refresh_s=0)


def pipeline_steps(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The main line of stages; each optional stage hangs below the stage before it as a side branch."""
    steps: list[dict[str, Any]] = []
    for view in views:
        if view["optional"] and steps:
            steps[-1]["branches"].append(view)
        else:
            steps.append({"view": view, "branches": []})
    return steps


def release_page(state: ReleaseState, pipeline: Pipeline, nonce: str = "", progress_view: dict | None = None) -> str:
    """One release: header, the pipeline picture, approval and traffic, stage table, notes.
    ``nonce`` authorises the inline refresh script under the Content-Security-Policy."""
    data = release_json(state, pipeline, progress_view)
    views = [{**v, "started": iso(v["started_at"])} for v in data["stages"]]
    return _page("dashboard_release.html", f"{state.release_id} · {state.status.value}", nonce=nonce,
                 script=REFRESH_JS, state=state, rel=data["release"], views=views, steps=pipeline_steps(views),
                 created=iso(state.created_at), notes_html=markdown_html(data["notes"]),
                 timeline=[{"stage": "", "attempt": None, "by": "", "reason": "", **e, "at_iso": iso(e.get("at"))}
                           for e in data["timeline"]],
                 waiting_text=data["waiting_text"], live=data["live_lines"], progress=data["progress"])


# -- responses --------------------------------------------------------------------
def _headers(content_type: str, nonce: str = "") -> dict[str, str]:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Content-Type": content_type,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'unsafe-inline'; script-src {script}; "
                                    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"),
    }


def _html(page: str, status: int = 200, nonce: str = "") -> Response:
    return status, page, _headers("text/html; charset=utf-8", nonce)


def _json(data: Any, status: int = 200) -> Response:
    return status, json.dumps(data, sort_keys=True, default=str), _headers("application/json")


def _error(status: int, message: str, *, api: bool, allow: str = "", root: str = "/") -> Response:
    if api:
        response = _json({"error": message}, status)
    else:
        response = _html(_page("dashboard_error.html", f"{status}", status=status, message=message, root=root), status)
    if allow:
        response[2]["Allow"] = allow
    return response


def wsgi_app(store: Any, where: Any = None):
    """The dashboard as a WSGI app (local serving and tests): ``wsgiref.simple_server.make_server(host, port, wsgi_app(store))``."""
    reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
               503: "Service Unavailable"}

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        status, body, headers = handle(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"), query, store,
                                       where=where)
        payload = b"" if environ["REQUEST_METHOD"] == "HEAD" else body.encode("utf-8")
        start_response(f"{status} {reasons.get(status, 'Error')}", list(headers.items()))
        return [payload]

    return app
