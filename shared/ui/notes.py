"""Release notes: Markdown derived from the stored release document.

The notes are not a second copy kept beside the release: the release document in
Firestore (plus the pipeline definition stored under its digest) already holds
every fact they show, so they are rendered from it whenever asked for (``relctl
notes``, the dashboard, the end of ``make demo``). Rendering is deterministic: the
same document gives byte-identical notes (UTC ISO times, pipeline order, no clock).

The facts come from what the executors write into ``stage.result``: JUnit counts
(``tests``/``failures``/``errors``/``skipped``) from test stages, ``dry_run_ms`` /
``apply_ms`` from the vector schema stage, ``checks`` from HTTP check stages, the
chaos verdict (``passed``/``error_rate``/``p95_ms``), ``revisions`` from deploy and
traffic stages, and the approval decision (``approver``/``decision``/``at``/``reason``).
"""
from __future__ import annotations

import urllib.parse
from datetime import datetime, timezone
from typing import Any, Iterable

from shared.domain.analysis import evidence_lines, summary_line
from shared.domain.ids import valid_release_id
from shared.domain.errors import PipelineError
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.domain.stage_results import (ApprovalResult, BuildResult, CheckResult, DeployResult, JobResult, JunitCounts,
                                         StageResult, bake_plan, common_result, result_of, results_of)
from shared.domain.state import ReleaseState, ReleaseStatus, StageState, StageStatus



class ReleaseNotFound(PipelineError):
    """No release document with this id (in this collection prefix)."""


def load_release(store: Any, release_id: str) -> tuple[ReleaseState, Pipeline]:
    """The stored release and the pipeline definition it started with."""
    if not valid_release_id(release_id):  # '/', '..', '__x__': no such document can exist
        raise ReleaseNotFound(f"unknown release {release_id[:100]!r} (not a release id)")
    got = store.get(release_id)
    if got is None:
        raise ReleaseNotFound(f"unknown release {release_id!r}")
    state = got[0]
    return state, store.load_pipeline(state.pipeline_digest)


# -- formatting shared by the notes, the CLI and the dashboard ------------------
def iso(ts: float | None) -> str:
    """UTC ISO 8601 to the second, or '' for no time."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(float(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def safe_url(value: Any) -> str:
    """Only http(s) links are shown as links; anything else (javascript:, data:) is dropped."""
    text = str(value or "")
    return text if urllib.parse.urlsplit(text).scheme in ("http", "https") else ""


def log_link(result: StageResult) -> str:
    """The http(s) link to a stage's log: a build's ``log_url`` or a job execution's ``log_uri``
    (on GCP console pages; in the local stack the stand-in serves its log files), else ""."""
    return safe_url(result.log_url)


def junit_counts(result: StageResult) -> JunitCounts | None:
    """The JUnit summary a test stage reported, or None when it reported none."""
    return result.junit if isinstance(result, BuildResult) else None


def junit_text(counts: JunitCounts) -> str:
    return f"{counts.tests} tests, {counts.failures} failures, {counts.errors} errors, {counts.skipped} skipped"


def is_prod_traffic_stage(stage: Stage) -> bool:
    return stage.environment == "prod" and stage.kind in (StageKind.DEPLOY, StageKind.TRAFFIC)


def traffic_percent(stage: Stage, st: StageState) -> int | None:
    """The share the stage put on the release's revision: what it recorded, else what it asked for."""
    result = result_of(stage.kind, st.result)
    revisions = result.revisions if isinstance(result, DeployResult) else ()
    recorded = [r.percent for r in revisions if r.percent is not None]
    if recorded:
        return min(recorded)
    asked = stage.params.get("traffic_percent", stage.params.get("percent"))
    return asked if isinstance(asked, int) else None


def rolled_back_from(stage: Stage, st: StageState):
    """The newest rollback (stage_results.Rollback) recorded on this attempt of a stage: its
    traffic no longer serves. None when there is none."""
    done = result_of(stage.kind, st.result).rolled_back
    return done[-1] if done else None


def traffic_now_text(stage: Stage, st: StageState) -> str:
    """What a finished prod traffic stage's share is now: as set, or taken back by a rollback."""
    percent = traffic_percent(stage, st)
    back = rolled_back_from(stage, st)
    if back is None:
        return f"{percent} % traffic since {iso(st.finished_at)}"
    return (f"{percent} % from {iso(st.finished_at)} until rolled back at {iso(back.at)}; "
            f"{back.service or '?'} serves {back.revision or 'what served before'} now")


def traffic_decisions(state: ReleaseState, pipeline: Pipeline) -> list[dict[str, Any]]:
    """Each finished prod deploy/traffic stage: percent, time, services and revisions."""
    decisions = []
    for stage in pipeline.stages:
        st = state.stages.get(stage.id)
        if st is None or not is_prod_traffic_stage(stage) or st.status is not StageStatus.SUCCEEDED:
            continue
        result = result_of(stage.kind, st.result)
        revisions = result.revisions if isinstance(result, DeployResult) else ()
        decisions.append({
            "stage": stage.id,
            "percent": traffic_percent(stage, st),
            "at": st.finished_at,
            "targets": [f"{r.service or '?'} -> {r.revision or '?'}" for r in revisions],
            "rolled_back_at": getattr(rolled_back_from(stage, st), "at", None),
        })
    return decisions


def approval_decision(state: ReleaseState, pipeline: Pipeline) -> dict[str, Any]:
    """The accepted decision, else the latest one recorded on the approval stage (a rejection)."""
    if state.approval.get("approver"):
        return dict(state.approval)
    gate = pipeline.approval_index
    if gate is None:
        return {}
    result = result_of(StageKind.APPROVAL, state.stages[pipeline.stages[gate].id].result)
    return dict(result.stored_decision) if isinstance(result, ApprovalResult) else {}


def timeline_text(entry: dict[str, Any]) -> str:
    """One timeline entry in words: ``2027-01-15T09:00:00Z  rejected approval (attempt 1) by boss@…: why``."""
    what = str(entry.get("kind", "?"))
    if entry.get("stage"):
        what += f" {entry['stage']}"
    if entry.get("attempt"):
        what += f" (attempt {entry['attempt']})"
    by = f" by {entry['by']}" if entry.get("by") else ""
    why = f": {entry['reason']}" if entry.get("reason") else ""
    return f"{iso(entry.get('at'))}  {what}{by}{why}"


def waiting_text(state: ReleaseState, pipeline: Pipeline) -> str:
    """Who was asked, since when, until when: for a release that waits for an approval ('' otherwise)."""
    gate = pipeline.approval_index
    if gate is None:
        return ""
    stage = pipeline.stages[gate]
    st = state.stages.get(stage.id)
    if st is None or st.status is not StageStatus.WAITING:
        return ""
    asked = approvers_asked(state, pipeline)
    return (f"approval (attempt {st.attempt}) asked of {', '.join(asked) or 'nobody'} since {iso(st.started_at)}; "
            f"links expire at {iso(st.deadline)}")


def approvers_asked(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    """The approvers a release asks: the approval stage's, less the one who pushed it."""
    gate = pipeline.approval_index
    if gate is None:
        return []
    return [str(a) for a in pipeline.stages[gate].params["approvers"] if str(a).lower() != state.pushed_by.lower()]


def approve_how(state: ReleaseState, pipeline: Pipeline, as_flag: bool = False) -> str:
    """How the waiting approval is given ('' when none waits): the mailed link or relctl, by whom.
    ``as_flag``: name the approver with ``--as`` (the local stack's token issuer signs for anyone)."""
    if not waiting_text(state, pipeline):
        return ""
    asked = approvers_asked(state, pipeline)
    who = f" --as {asked[0]}" if as_flag and asked else ""
    return (f"to decide, {' or '.join(asked) or 'an approver'} opens the link mailed to them, or runs "
            f"`relctl approve {state.release_id}{who}` (relctl reject, with --reason, says no)")


def bake_text(stage: Stage, st: StageState, now: float) -> str:
    """A running check in words: how far into its window and bake it is ('' for anything else).
    The probe keeps its interval verdicts in its own task until the check ends; the release
    records them then (``result.analysis``)."""
    if stage.kind is not StageKind.CHECK or st.status is not StageStatus.RUNNING or st.started_at is None:
        return ""
    plan = bake_plan(st.result)
    if plan is None:
        return ""
    window, bake = plan
    elapsed = max(0.0, now - st.started_at)
    return (f"{stage.id} baking: {duration_text(elapsed)} in, planned up to {duration_text(window)} window "
            f"+ {duration_text(bake)} bake; the verdict of each interval is recorded when the check ends")


def live_lines(state: ReleaseState, pipeline: Pipeline, now: float, local: bool = False) -> list[str]:
    """What moves while nothing is recorded: a bake under way, an approval that waits (and how to give it)."""
    lines = [bake_text(stage, state.stages[stage.id], now) for stage in pipeline.stages]
    lines += [waiting_text(state, pipeline), approve_how(state, pipeline, as_flag=local)]
    return [line for line in lines if line]


# -- Markdown -------------------------------------------------------------------
def _cell(value: Any) -> str:
    """Text that cannot break a Markdown table row."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _code(value: Any) -> str:
    return "`" + str(value).replace("`", "'") + "`" if value not in (None, "") else ""


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _stage_detail(st: StageState) -> str:
    parts = []
    if st.reason:
        parts.append(st.reason)
    earlier = [f"attempt {a.attempt} {a.status}" + (f": {a.reason}" if a.reason else "") for a in st.history]
    if earlier:
        parts.append("earlier: " + "; ".join(earlier))
    link = log_link(common_result(st.result))
    if link:
        parts.append(f"log: {link}")
    return " — ".join(parts)


def verdict_line(stage: Stage, st: StageState) -> str:
    """One stage's verdict in one line: status, and the number that decided it."""
    result = result_of(stage.kind, st.result)
    detail = ""
    counts = junit_counts(result)
    if st.status is StageStatus.FAILED and st.reason:
        detail = st.reason if len(st.reason) <= 160 else st.reason[:157] + "…"
    elif isinstance(result, ApprovalResult) and result.approver:
        detail = f"{result.decision or 'decided'} by {result.approver}"
    elif counts is not None:
        detail = junit_text(counts)
    elif isinstance(result, CheckResult) and result.analysis is not None and result.analysis.latest:
        detail = summary_line(result.analysis.latest)
    elif is_prod_traffic_stage(stage) and st.status is StageStatus.SUCCEEDED:
        detail = traffic_now_text(stage, st)
    elif isinstance(result, CheckResult) and result.checks is not None:
        good = sum(1 for c in result.checks if isinstance(c.status, int) and 200 <= c.status < 300)
        detail = f"{good}/{len(result.checks)} paths answered 2xx"
    took = f" in {duration_text(st.duration_s)}" if st.duration_s is not None else ""
    return f"{stage.number} {stage.name}: {st.status.value}{took}" + (f" — {detail}" if detail else "")


def _changelog(state: ReleaseState, pipeline: Pipeline, verdicts: bool = True) -> list[str]:
    """What a team pastes into its channel: the release in one line, the commits since prod with
    their authors, who approved, and each verdict in one line."""
    decision = approval_decision(state, pipeline)
    headline = f"**{state.version}** ({_code(state.tag)}) of {state.repo}: {state.status.value}"
    if decision.get("approver"):
        headline += f", {decision.get('decision', 'approved')} by {decision['approver']} at {iso(decision.get('at'))}"
    out = [headline, ""]
    changes = state.changes or {}
    commits = [c for c in changes.get("commits") or [] if isinstance(c, dict)]
    since = " since prod" if changes.get("source") == "github compare" else " in the push"
    out += [f"## Changes{since}", ""]
    if commits:
        out += [f"- {_code(str(c.get('id', ''))[:7])} {c.get('message', '')}" + (f" — {c['author']}" if c.get("author")
                                                                                  else "") for c in commits]
        total = changes.get("total")
        if isinstance(total, int) and total > len(commits):
            out.append(f"- … and {total - len(commits)} more")
    else:
        out.append(f"- {_code(state.commit[:7])} (no commit list recorded)")
    if safe_url(changes.get("compare_url")):
        out.append(f"- compare: {safe_url(changes['compare_url'])}")
    if changes.get("note"):
        out.append(f"- {changes['note']}")
    if not verdicts:
        return out
    out += ["", "## Verdicts", ""]
    for stage in pipeline.stages:
        st = state.stages.get(stage.id) or StageState()
        if st.status is StageStatus.PENDING or (stage.optional and st.status is StageStatus.SKIPPED):
            continue
        out.append(f"- {verdict_line(stage, st)}")
    return out


def render(state: ReleaseState, pipeline: Pipeline, per_stage: bool = True) -> str:
    """The release notes of one release as Markdown: the change log first, stage detail after.
    ``per_stage=False`` leaves out the verdict list and the stage table, for a page that draws
    every stage already (the dashboard: each stage once per view)."""
    out = [f"# Release {state.version} of {state.repo}", ""]
    out += _changelog(state, pipeline, per_stage)
    out += ["", "## Release", ""]
    out += _table(("Field", "Value"), [
        ("Version", state.version),
        ("Tag", _code(state.tag)),
        ("Commit", _code(state.commit)),
        ("Repository", state.repo),
        ("Ref", state.ref),
        ("Pushed by", state.pushed_by),
        ("Release id", _code(state.release_id)),
        ("Pipeline", f"{state.pipeline_name} ({state.pipeline_digest[:12]})"),
        ("Created", iso(state.created_at)),
        ("Status", state.status.value),
    ])
    if state.reason and state.status in (ReleaseStatus.SUPERSEDED, ReleaseStatus.CANCELLED):
        out += ["", f"## {state.status.value.capitalize()}", "", state.reason[:1].upper() + state.reason[1:]]
    elif state.reason:
        out += ["", "## Stopped", "", f"Stopped at stage `{state.stopped_at_stage}`: {state.reason}"]

    if per_stage:
        out += ["", "## Stages", ""]
        rows = []
        for stage in pipeline.stages:
            st = state.stages.get(stage.id) or StageState()
            rows.append((stage.number, stage.name, st.status.value, st.attempt, iso(st.started_at),
                         duration_text(st.duration_s), _stage_detail(st)))
        out += _table(("#", "Stage", "Result", "Attempts", "Started", "Duration", "Detail"), rows)

    out += _tests_section(state, pipeline)
    out += _images_section(state, pipeline)
    out += _schema_section(state, pipeline)
    out += _smoke_section(state, pipeline)
    out += _analysis_section(state, pipeline)
    out += _chaos_section(state, pipeline)
    out += _approval_section(state, pipeline)
    out += _traffic_section(state, pipeline)
    if state.replays:
        out += ["", "## Replays", ""]
        out += _table(("At", "Stage", "By", "Accepted", "Reason"), [
            (iso(r.get("at")), r.get("stage", ""), r.get("requested_by", ""),
             "yes" if r.get("accepted") else "no", r.get("reason", "")) for r in state.replays])
    if state.timeline:  # every decision and operator action, including those a resend replaced
        out += ["", "## Timeline", ""]
        out += _table(("At", "What", "Stage", "By", "Why"), [
            (iso(e.get("at")), e.get("kind", ""), e.get("stage", ""), e.get("by", ""), e.get("reason", ""))
            for e in state.timeline])
    return "\n".join(out) + "\n"


def _tests_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    rows = []
    for stage in pipeline.stages:
        counts = junit_counts(result_of(stage.kind, state.stages[stage.id].result)) if stage.id in state.stages else None
        if counts is not None and not stage.optional:
            rows.append((stage.name, counts.tests, counts.failures, counts.errors, counts.skipped))
    if not rows:
        return []
    return ["", "## Tests", ""] + _table(("Suite", "Tests", "Failures", "Errors", "Skipped"), rows)


def _images_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    """What each job execution and each deploy's revisions ran: the image by digest, as the
    executors recorded it (a job from its execution's template)."""
    rows = []
    for stage in pipeline.stages:
        st = state.stages.get(stage.id)
        if st is None or stage.kind not in (StageKind.JOB, StageKind.DEPLOY):
            continue
        result = result_of(stage.kind, st.result)
        if not result.image:
            continue
        ran_in = (result.execution.rsplit("/jobs/", 1)[-1] if isinstance(result, JobResult) else
                  ", ".join(f"{t.service}/{t.revision}" for t in result.revisions))
        rows.append((stage.name, st.status.value, _code(result.image), _code(ran_in)))
    return ["", "## Images", ""] + _table(("Stage", "Result", "Image", "Ran as"), rows) if rows else []


def _schema_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    lines = []
    for stage in pipeline.stages:
        result = result_of(stage.kind, state.stages[stage.id].result if stage.id in state.stages else {})
        if isinstance(result, BuildResult) and result.timed_schema:
            total = sum(float(v or 0) if v != "?" else 0.0 for v in (result.dry_run_ms, result.apply_ms))
            lines.append(f"- {stage.name}: dry run {result.dry_run_ms} ms, "
                         f"apply {result.apply_ms} ms (total {total:.1f} ms; recorded, not judged)")
    return ["", "## Vector schema", ""] + lines if lines else []


def _smoke_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    out: list[str] = []
    for stage in pipeline.stages:
        if stage.kind is not StageKind.CHECK or stage.id not in state.stages:
            continue
        st = state.stages[stage.id]
        result = result_of(stage.kind, st.result)
        checks = result.checks if isinstance(result, CheckResult) else None
        if not checks:
            continue
        out += ["", f"### {stage.name} ({st.status.value}) against {result.url or '?'}", ""]
        out += _table(("Path", "Status", "Latency", "Attempts"), [
            (c.path, c.status if c.status is not None else f"no answer ({c.error or '?'})",
             f"{c.latency_ms} ms" if c.latency_ms is not None else "", c.attempts)
            for c in checks])
    return ["", "## Smoke checks"] + out if out else []


def _analysis_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    """The canary analysis of each check stage: the last verdict with its numbers and log lines."""
    out: list[str] = []
    for stage in pipeline.stages:
        st = state.stages.get(stage.id)
        result = result_of(stage.kind, st.result) if st is not None else None
        analysis = result.analysis if isinstance(result, CheckResult) else None
        if analysis is None or analysis.latest is None:
            continue
        counts = ", ".join(f"{getattr(analysis, k)} {k}" for k in ("passes", "inconclusive", "fails") if getattr(analysis, k))
        out += ["", f"### {stage.name} ({st.status.value}; intervals: {counts or 'none'})", "", "```text"]
        out += [line.replace("`", "'") for line in evidence_lines(analysis.latest)]  # log text cannot end the block
        out += ["```"]
    return ["", "## Canary analysis"] + out if out else []


def _chaos_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    out: list[str] = []
    for stage in pipeline.stages:
        if not stage.optional or stage.id not in state.stages:
            continue
        st = state.stages[stage.id]
        result = result_of(stage.kind, st.result)
        chaos = result.chaos if isinstance(result, BuildResult) else None
        if st.status in (StageStatus.PENDING, StageStatus.SKIPPED) and not state.chaos_requested_by:
            out.append(f"- {stage.name}: not requested ({st.status.value})")
            continue
        who = f" requested by {state.chaos_requested_by}" if state.chaos_requested_by else ""
        out.append(f"- {stage.name}{who}: {st.status.value}")
        if chaos is not None:
            rate_text = f"{chaos.error_rate:.2%}" if chaos.error_rate is not None else "n/a"
            p95_text = f"{chaos.p95_ms:.0f} ms" if chaos.p95_ms is not None else "n/a"
            limits = ""
            if chaos.max_error_rate is not None and chaos.max_p95_ms is not None:
                limits = f" (limits: < {chaos.max_error_rate:.2%}, < {chaos.max_p95_ms:.0f} ms)"
            out.append(f"- error rate {rate_text}, P95 {p95_text}, passed: {'yes' if chaos.passed else 'no'}{limits}")
            out += [f"- why: {reason}" for reason in chaos.reasons]
            decided = dict(chaos.decided_by)  # the worst report counts; say which it was
            out += [f"- {label} from {decided[key]}" for key, label in (("error_rate", "error rate"), ("p95_ms", "P95"))
                    if key in decided]
    return ["", "## Chaos smoke", ""] + out if out else []


def _approval_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    if pipeline.approval_index is None:
        return []
    decision = approval_decision(state, pipeline)
    if not decision.get("approver"):
        st = state.stages[pipeline.stages[pipeline.approval_index].id]
        return ["", "## Approval", "", f"- no decision yet ({st.status.value})"]
    line = f"- {decision.get('decision', 'decided')} by {decision['approver']} at {iso(decision.get('at'))}"
    if decision.get("reason"):
        line += f" — reason: {decision['reason']}"
    return ["", "## Approval", "", line]


def rollback_lines(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    """Every rollback recorded on the release (who, when, from, to, why), oldest first."""
    lines = []
    for stage in pipeline.stages:
        st = state.stages.get(stage.id) or StageState()
        for result in results_of(stage.kind, st):
            for r in result.rolled_back:
                lines.append(f"rolled back {r.service or '?'} from {r.from_revision or '?'} to "
                             f"{r.revision or '?'} at {iso(r.at)} by {r.by or '?'}"
                             + (f": {r.why}" if r.why else ""))
            if result.rollback_error:
                lines.append(f"rollback of {stage.id} FAILED: {result.rollback_error}")
    return lines


def _traffic_section(state: ReleaseState, pipeline: Pipeline) -> list[str]:
    decisions = traffic_decisions(state, pipeline)
    rolled = [f"- {line}" for line in rollback_lines(state, pipeline)]
    if not decisions and not rolled:
        return []
    lines = []
    for d in decisions:
        percent = f"{d['percent']} %" if d["percent"] is not None else "? %"
        targets = f" ({', '.join(d['targets'])})" if d["targets"] else ""
        lines.append(f"- {percent} at {iso(d['at'])} by stage `{d['stage']}`{targets}")
    return ["", "## Traffic", ""] + lines + rolled

