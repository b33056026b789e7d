"""The ``on_approval`` function's HTTP side: request parsing and the pages around ApprovalService.

``ApprovalPages.handle`` is the whole HTTP logic as a plain function of (method, query, form,
headers) -> HttpAnswer(status, html, headers), so the entry point only translates the
framework's request and response, and the service (shared/app/approvals.py) only decides.

GET and HEAD change nothing (mail scanners fetch links). POST validates everything,
consumes the nonce (exactly once, in the store), then publishes ``approval.decided``.
The refusals and their precedence are the service's (see its module docstring).
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from shared.app.approvals import ApprovalRefused, ApprovalService, Checked
from shared.domain.approval_tokens import TokenError
from shared.domain.pipeline import Stage, StageKind
from shared.domain.stage_results import BuildResult, ChaosVerdict, common_result, result_of
from shared.domain.state import ReleaseState, StageState, StageStatus
from shared.ui import approval_pages as pages
from shared.ui.dashboard import stage_detail
from shared.ui.notes import log_link


class HttpAnswer(NamedTuple):
    status: int
    html: str
    headers: dict[str, str]


class ApprovalPages:
    def __init__(self, service: ApprovalService):
        self.service = service

    def handle(self, method: str, query: Mapping[str, str], form: Mapping[str, str], headers: Mapping[str, str]) -> HttpAnswer:
        method = method.upper()
        if method not in ("GET", "HEAD", "POST"):
            return HttpAnswer(405, pages.refusal_page("Method not allowed", "Use the link (GET) or the form (POST)."),
                              {**pages.SECURITY_HEADERS, "Allow": "GET, HEAD, POST"})
        token = (form.get("token") if method == "POST" else None) or query.get("token") or ""
        try:
            checked = self.service.check_link(token)
            if method == "POST":
                return self._decide(checked, form, headers)
            page = self._confirm(checked, token)
            return HttpAnswer(200, "" if method == "HEAD" else page, dict(pages.SECURITY_HEADERS))
        except TokenError as exc:
            title = {400: "Invalid link", 403: "Link not valid", 410: "Link expired"}[exc.status]
            return self._refusal(exc.status, title, str(exc), method)
        except ApprovalRefused as exc:
            return self._refusal(exc.status, exc.title, str(exc), method)

    def _refusal(self, status: int, title: str, message: str, method: str) -> HttpAnswer:
        return HttpAnswer(status, "" if method == "HEAD" else pages.refusal_page(title, message), dict(pages.SECURITY_HEADERS))

    def _decide(self, checked: Checked, form: Mapping[str, str], headers: Mapping[str, str]) -> HttpAnswer:
        decided = self.service.decide(checked, form.get("decision") or "", form.get("reason") or "",
                                      _header(headers, "User-Agent"))
        if not decided.delivered:
            return HttpAnswer(503, pages.refusal_page(
                "Decision recorded, not yet delivered",
                "your decision was saved but could not be passed to the pipeline; an operator re-drives it "
                "from the dead letters (nothing else is needed from you, and the link cannot be used again)",
                unchanged=False,
            ), dict(pages.SECURITY_HEADERS))
        claims = checked.claims
        answer = pages.done_page(decided.approved, claims.release_id, claims.tag, claims.approver)
        return HttpAnswer(200, answer, dict(pages.SECURITY_HEADERS))

    def _confirm(self, checked: Checked, token: str) -> str:
        release, stage = checked.release, checked.stage
        return pages.confirm_page(
            release=release,
            stage_label=f"{stage.number} {stage.name} ({stage.id})",
            approver=checked.claims.approver,
            expires_at=checked.claims.expires_at,
            digest=checked.claims.digest,
            stage_rows=self._stage_rows(release, stage),
            chaos=self._chaos(release),
            token=token,
            prod_runs=self.service.prod_runs(release),
            dashboard_url=(f"{self.service.settings.public_base_url.rstrip('/')}/release/{release.release_id}"
                           if self.service.settings.public_base_url else ""),
        )

    def _stage_rows(self, release: ReleaseState, approval: Stage) -> list[tuple[str, str, str, str]]:
        """The stages before the approval that ran, in pipeline order, each with its evidence in
        words (test counts, answers and latencies, the failure reason) rather than the raw result,
        and the link to its log (builds and jobs)."""
        get_pipeline = self.service.get_pipeline
        if get_pipeline is None:
            return [(stage_id, st.status.value, st.reason[:200], log_link(common_result(st.result)))
                    for stage_id, st in release.stages.items() if st.attempt and stage_id != approval.id]
        pipeline = get_pipeline(release)
        rows = []
        for stage in pipeline.stages[:pipeline.index(approval.id)]:
            st = release.stages.get(stage.id)
            if st is None or stage.optional or not st.attempt:
                continue
            rows.append((f"{stage.number} {stage.name}", st.status.value,
                         stage_detail(stage, st, release, pipeline)[:300], log_link(result_of(stage.kind, st.result))))
        return rows

    def _chaos(self, release: ReleaseState) -> dict[str, Any] | None:
        """The optional chaos stage's outcome. The verdict of ``python -m shared.domain.chaos`` reaches
        the stage result through $BUILDER_OUTPUT (events.builder_output spreads its keys there)."""
        # Without the pipeline, a stage named chaos or one carrying a verdict is taken as the chaos build.
        if self.service.get_pipeline is not None:
            kinds = {s.id: s.kind for s in self.service.get_pipeline(release).stages if s.optional}
        else:
            kinds = {sid: StageKind.BUILD for sid, st in release.stages.items()
                     if sid == "chaos" or _chaos_of(StageKind.BUILD, st) is not None}
        for stage_id, kind in kinds.items():
            st = release.stages.get(stage_id)
            if st is not None and st.status not in (StageStatus.PENDING, StageStatus.SKIPPED):
                chaos = _chaos_of(kind, st)
                return {"stage": stage_id, "status": st.status.value, **(dict(chaos.stored) if chaos else {})}
        return None


def _chaos_of(kind: StageKind, st: StageState) -> ChaosVerdict | None:
    result = result_of(kind, st.result)
    return result.chaos if isinstance(result, BuildResult) else None


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), "")
    return str(value or "")
