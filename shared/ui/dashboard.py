"""The operator's dashboard: releases and each release drawn as its pipeline.

``handle(method, path, query, store) -> (status, body, headers)`` is the whole
interface, so the Cloud Function entry point is one line::

    status, body, headers = dashboard.handle(request.method, request.path, request.args, bootstrap.store())

Routes (GET/HEAD only): ``/`` the releases, newest first; ``/release/<id>`` one
release as a flow of stage boxes that refreshes itself from ``/api/release/<id>``
while it runs; ``/api/releases`` and ``/api/release/<id>`` the same as JSON.
Links are relative, so the pages work under any URL prefix (a function URL).
Everything from the store is escaped; the refresh script sets only text and
http(s) links. Every stage element carries ``data-stage`` and ``data-status``.
"""
from __future__ import annotations

import html
import json
import secrets
import urllib.parse
from typing import Any, Mapping

from shared.domain.analysis import summary_line
from shared.domain.errors import PipelineError
from shared.ui.notes import (
    ReleaseNotFound,
    approval_decision,
    duration_text,
    is_prod_traffic_stage,
    iso,
    junit_counts,
    junit_text,
    load_release,
    render,
    safe_url,
    traffic_percent,
)
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.state import ReleaseState, StageState, StageStatus
from shared.ui.templates.dashboard_assets import CSS, REFRESH_JS

Response = tuple[int, str, dict[str, str]]


def handle(method: str, path: str, query: Mapping[str, Any] | None, store: Any) -> Response:
    """Answer one dashboard request from the release store."""
    if method not in ("GET", "HEAD"):
        return _error(405, "only GET is served here", api=(path or "").startswith("/api/"), allow="GET, HEAD")
    parts = [urllib.parse.unquote(p) for p in (path or "/").strip("/").split("/") if p]
    api = bool(parts) and parts[0] == "api"
    root = "../" * (len(parts) - 1) if len(parts) > 1 else "./"
    try:
        if not parts:
            return _html(release_list_page(store.list_releases(_limit(query))))
        if parts == ["api", "releases"]:
            return _json({"releases": [release_summary(s) for s in store.list_releases(_limit(query))]})
        if len(parts) == 2 and parts[0] == "release":
            state, pipeline = load_release(store, parts[1])
            nonce = secrets.token_urlsafe(16)
            return _html(release_page(state, pipeline, nonce), nonce=nonce)
        if len(parts) == 3 and parts[:2] == ["api", "release"]:
            state, pipeline = load_release(store, parts[2])
            return _json(release_json(state, pipeline))
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
def release_summary(state: ReleaseState) -> dict[str, Any]:
    active = (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED)
    current = next((sid for sid, st in state.stages.items() if st.status in active), state.stopped_at_stage)
    return {
        "release_id": state.release_id, "repo": state.repo, "version": state.version, "tag": state.tag,
        "commit": state.commit, "pushed_by": state.pushed_by, "status": state.status.value,
        "terminal": state.status.terminal, "created_at": state.created_at, "updated_at": state.updated_at,
        "current_stage": current, "reason": state.reason, "waiting_for": state.waiting_for,
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
        "detail": stage_detail(stage, st, state, pipeline), "log_url": safe_url(st.result.get("log_url")),
        "traffic_percent": traffic_percent(stage, st) if is_prod_traffic_stage(stage) else None,
        "result": st.result,
    }


def stage_detail(stage: Stage, st: StageState, state: ReleaseState, pipeline: Pipeline) -> str:
    result = st.result
    if stage.kind is StageKind.APPROVAL:
        decision = approval_decision(state, pipeline)
        if decision.get("approver") and st.status in (StageStatus.SUCCEEDED, StageStatus.FAILED):
            return f"{decision.get('decision', 'decided')} by {decision['approver']} at {iso(decision.get('at'))}"
        if st.status is StageStatus.WAITING:
            return "waiting for an approver"
    if st.status is StageStatus.QUEUED:
        return f"queued: another release holds {stage.environment}"
    analysis = (result.get("analysis") or {}).get("latest") if isinstance(result.get("analysis"), dict) else None
    if st.status is StageStatus.FAILED and st.reason:
        reason = st.reason if len(st.reason) <= 160 else st.reason[:157] + "…"
        return reason + (f" ({summary_line(analysis)})" if analysis else "")
    if is_prod_traffic_stage(stage) and st.status is StageStatus.SUCCEEDED:
        return f"{traffic_percent(stage, st)} % traffic since {iso(st.finished_at)}"
    counts = junit_counts(result)
    if counts is not None:
        return junit_text(counts)
    if "dry_run_ms" in result or "apply_ms" in result:
        return f"dry run {result.get('dry_run_ms', '?')} ms, apply {result.get('apply_ms', '?')} ms"
    if isinstance(result.get("checks"), list):
        checks = [c for c in result["checks"] if isinstance(c, dict)]
        good = sum(1 for c in checks if isinstance(c.get("status"), int) and 200 <= c["status"] < 300)
        latencies = ", ".join(f"{c.get('path')} {c.get('status') or c.get('error') or '-'}"
                              + (f" in {c['latency_ms']:.0f} ms" if isinstance(c.get("latency_ms"), (int, float)) else "")
                              for c in checks)
        return (f"{good}/{len(checks)} paths answered 2xx" + (f" ({latencies})" if latencies else "")
                + (f"; {summary_line(analysis)}" if analysis else ""))
    if "passed" in result and isinstance(result.get("error_rate"), (int, float)):
        p95 = result.get("p95_ms")
        return (f"error rate {result['error_rate']:.2%}, P95 {p95:.0f} ms" if isinstance(p95, (int, float))
                else f"error rate {result['error_rate']:.2%}") + (" — passed" if result["passed"] else " — failed")
    if stage.optional and st.status is StageStatus.PENDING:
        return "optional: runs when requested"
    return ""


def release_json(state: ReleaseState, pipeline: Pipeline) -> dict[str, Any]:
    """Everything the release page shows; the refresh script redraws the page from it."""
    decision = {k: v for k, v in approval_decision(state, pipeline).items() if k != "nonce"}
    stages = [stage_view(s, state.stages.get(s.id) or StageState(), state, pipeline) for s in pipeline.stages]
    approval_text = "none yet"
    if decision.get("approver"):
        approval_text = (f"{decision.get('decision', 'decided')} by {decision['approver']} at {iso(decision.get('at'))}"
                         + (f" — {decision['reason']}" if decision.get("reason") else ""))
    traffic = [f"{v['traffic_percent']} % at {iso(v['finished_at'])} ({v['id']})" for v in stages
               if v["traffic_percent"] is not None and v["status"] == "succeeded"]
    return {
        "release": {**release_summary(state), "ref": state.ref, "stopped_at_stage": state.stopped_at_stage,
                    "pipeline": state.pipeline_name, "chaos_requested_by": state.chaos_requested_by,
                    "approval": decision, "approval_text": approval_text,
                    "traffic_text": "; ".join(traffic) or "no prod traffic yet"},
        "stages": stages,
        "replays": state.replays,
        "notes": render(state, pipeline),
    }


# -- HTML -------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, *, nonce: str = "", script: str = "", refresh_s: int = 0) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    js = f'<script nonce="{nonce}">{script}</script>' if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">{refresh}'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}{js}</body></html>")


def release_list_page(states: list[ReleaseState]) -> str:
    rows = "".join(
        f'<tr data-release-row="{_e(s.release_id)}">'
        f'<td><a href="release/{_e(urllib.parse.quote(s.release_id, safe=""))}">{_e(s.release_id)}</a></td>'
        f"<td>{_e(s.version)}</td><td><code>{_e(s.tag)}</code></td><td>{_e(s.repo)}</td>"
        f'<td><span class="badge" data-status="{_e(s.status.value)}">{_e(s.status.value)}</span></td>'
        f"<td>{_e(release_summary(s)['current_stage'])}</td><td>{_e(s.pushed_by)}</td><td>{_e(iso(s.created_at))}</td></tr>"
        for s in states
    ) or '<tr><td colspan="8">no releases yet</td></tr>'
    body = ("<h1>Releases</h1><p class=\"sub\">newest first</p><table><thead><tr><th>Release</th><th>Version</th>"
            "<th>Tag</th><th>Repository</th><th>Status</th><th>Stage</th><th>Pushed by</th><th>Created (UTC)</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")
    moving = any(not s.status.terminal and s.status.value != "stopped" for s in states)
    return _page("Releases", body, refresh_s=5 if moving else 0)


def _stage_box(view: dict[str, Any]) -> str:
    log = view["log_url"]
    link = (f'<a data-field="log" href="{_e(log)}" target="_blank" rel="noopener noreferrer">build log</a>' if log
            else '<a data-field="log" hidden>build log</a>')
    optional = " optional" if view["optional"] else ""
    return (f'<div class="stage{optional}" data-stage="{_e(view["id"])}" data-status="{_e(view["status"])}" '
            f'data-kind="{_e(view["kind"])}" title="{_e(view["name"])} ({_e(view["kind"])}, {_e(view["environment"])})">'
            f'<div class="num">{_e(view["number"])}</div><div class="name">{_e(view["name"])}</div>'
            f'<div class="st" data-field="status">{_e(view["status"])}</div>'
            f'<div class="meta" data-field="meta">{_e(view["meta"])}</div>'
            f'<div class="detail" data-field="detail">{_e(view["detail"])}</div>{link}</div>')


def pipeline_flow(views: list[dict[str, Any]]) -> str:
    """Boxes joined by arrows; an optional stage hangs below the stage before it as a side branch."""
    steps: list[str] = []
    for i, view in enumerate(views):
        if view["optional"]:
            continue
        branches = ""
        for later in views[i + 1:]:
            if not later["optional"]:
                break
            branches += f'<div class="branch"><span class="branch-mark">↳</span>{_stage_box(later)}</div>'
        arrow = '<div class="arrow">→</div>' if steps else ""
        steps.append(f'<div class="step">{arrow}<div class="column">{_stage_box(view)}{branches}</div></div>')
    return f'<div class="flow" aria-label="pipeline">{"".join(steps)}</div>'


def _detail_rows(views: list[dict[str, Any]]) -> str:
    rows = []
    for v in views:
        log = (f'<a data-field="log" href="{_e(v["log_url"])}" rel="noopener noreferrer">log</a>' if v["log_url"]
               else '<a data-field="log" hidden>log</a>')
        rows.append(
            f'<tr data-row="{_e(v["id"])}" data-status="{_e(v["status"])}"><td>{_e(v["number"])}</td><td>{_e(v["name"])}</td>'
            f'<td><span class="badge" data-field="status" data-status="{_e(v["status"])}">{_e(v["status"])}</span></td>'
            f'<td data-field="meta">{_e(v["meta"])}</td><td>{_e(iso(v["started_at"]))}</td>'
            f'<td data-field="detail">{_e(v["detail"])}</td><td>{log}</td></tr>')
    return "".join(rows)


def release_page(state: ReleaseState, pipeline: Pipeline, nonce: str = "") -> str:
    """One release: header, the pipeline picture, approval and traffic, stage table, notes.
    ``nonce`` authorises the inline refresh script under the Content-Security-Policy."""
    data = release_json(state, pipeline)
    views, rel = data["stages"], data["release"]
    hidden = "" if state.reason else " hidden"
    body = (
        f'<main data-release="{_e(state.release_id)}" data-terminal="{str(state.status.terminal).lower()}" '
        f'data-updated-at="{_e(state.updated_at)}" data-release-status="{_e(state.status.value)}">'
        f'<p><a href="../">← all releases</a></p>'
        f'<h1>{_e(state.repo)} {_e(state.version)} <span class="badge" data-field="release-status" '
        f'data-status="{_e(state.status.value)}">{_e(state.status.value)}</span></h1>'
        f'<p class="sub">tag <code>{_e(state.tag)}</code> · commit <code>{_e(state.commit)}</code> · ref {_e(state.ref)}'
        f" · pushed by {_e(state.pushed_by)} · created {_e(iso(state.created_at))} · pipeline {_e(state.pipeline_name)}"
        f' <span class="live" id="live"></span></p>'
        f'<p class="reason" data-field="release-reason"{hidden}>{_e(state.reason)}</p>'
        f"<h2>Pipeline</h2>{pipeline_flow(views)}"
        f'<h2>Approval and traffic</h2><ul><li>Approval: <span data-approval data-field="approval_text">'
        f'{_e(rel["approval_text"])}</span></li>'
        f'<li>Traffic: <span data-traffic data-field="traffic_text">{_e(rel["traffic_text"])}</span></li></ul>'
        f"<h2>Stages</h2><table><thead><tr><th>#</th><th>Stage</th><th>Status</th><th>Attempt · duration</th>"
        f"<th>Started (UTC)</th><th>Detail</th><th>Log</th></tr></thead><tbody>{_detail_rows(views)}</tbody></table>"
        f'<h2>Release notes</h2><pre class="notes" data-field="notes">{_e(data["notes"])}</pre></main>'
    )
    return _page(f"{state.release_id} · {state.status.value}", body, nonce=nonce, script=REFRESH_JS)


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
        response = _html(_page(f"{status}", f'<h1>{status}</h1><p class="reason">{_e(message)}</p>'
                                            f'<p><a href="{_e(root)}">all releases</a></p>'), status)
    if allow:
        response[2]["Allow"] = allow
    return response


def wsgi_app(store: Any):
    """The dashboard as a WSGI app (local serving and tests): ``wsgiref.simple_server.make_server(host, port, wsgi_app(store))``."""
    reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
               503: "Service Unavailable"}

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        status, body, headers = handle(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"), query, store)
        payload = b"" if environ["REQUEST_METHOD"] == "HEAD" else body.encode("utf-8")
        start_response(f"{status} {reasons.get(status, 'Error')}", list(headers.items()))
        return [payload]

    return app
