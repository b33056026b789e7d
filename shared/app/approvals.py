"""Approval by signed link: send personal links, show a confirm page, take the decision.

``ApprovalService.request`` implements the ApprovalRequester port for the dispatcher.
``ApprovalService.handle`` is the whole HTTP logic of the ``on_approval`` function as a
plain function of (method, query, form, headers) -> HttpAnswer(status, html, headers),
so the entry point only translates the framework's request and response.

GET and HEAD change nothing (mail scanners fetch links). POST validates everything,
consumes the nonce (exactly once, in the store), then publishes ``approval.decided``.
The gate checks the same rules again when the event arrives; this function refuses
early so that the approver sees why, and so that no event is published for a refusal.

Refusal precedence (first that applies wins; every refusal changes nothing)::

    400 malformed token / unknown decision     403 bad signature or unknown key
    410 link expired                            404 no such approval request
    403 token does not match its request        409 link already used
    404 release not found                       409 release not waiting for this request
    410 approval stage deadline passed          403 approver not on the stage's list
    403 approver pushed the commit
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence
from urllib.parse import quote

from shared.domain.identity import approval_refusal
from shared.ui import approval_pages as pages
from shared.domain.approval_record import ApprovalRecord
from shared.domain.approval_tokens import Keyring, LinkClaims, TokenError, sign, verify
from shared.domain.commands import RequestApproval
from shared.app.config import Settings
from shared.domain.errors import ConfigError, PipelineError, TransientError
from shared.domain.events import ApprovalDecided
from shared.adapters.notify.errors import NotifyError
from shared.adapters.notify.messages import format_approval_link
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.app.ports import ApprovalStore, Clock, DeadLetterStore, EventPublisher, LinkSender, ReleaseStore
from shared.domain.dead_letters import DeadLetter
from shared.domain.wire import encode
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
MAX_USER_AGENT_CHARS = 300
DECISIONS = {"approve": "approved", "reject": "rejected"}
VERDICT_KEYS = ("passed", "error_rate", "p95_ms", "max_error_rate", "max_p95_ms", "reasons")


class HttpAnswer(NamedTuple):
    status: int
    html: str
    headers: dict[str, str]


class ApprovalRefused(PipelineError):
    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status = status
        self.title = title


@dataclass(frozen=True)
class _Checked:
    claims: LinkClaims
    record: ApprovalRecord
    release: ReleaseState
    stage: Stage


def new_nonce() -> str:
    while True:
        nonce = secrets.token_urlsafe(24)
        if not nonce.startswith("__"):  # Firestore reserves ids of the form __x__
            return nonce


class ApprovalService:
    def __init__(
        self,
        settings: Settings,
        store: ApprovalStore,
        keyring: Keyring | None,  # None: decisions by identity only (the operator function holds no key)
        publisher: EventPublisher,
        clock: Clock,
        link_senders: Sequence[LinkSender] = (),
        get_release: Callable[[str], ReleaseState | None] | None = None,
        get_stage: Callable[[ReleaseState], Stage] | None = None,
        get_pipeline: Callable[[ReleaseState], Pipeline] | None = None,
        dead_letters: DeadLetterStore | None = None,
    ):
        self.settings = settings
        self.store = store
        self.keyring = keyring
        self.publisher = publisher
        self.clock = clock
        self.link_senders = tuple(link_senders)
        self.get_release = get_release
        self.get_stage = get_stage
        self.get_pipeline = get_pipeline
        self.dead_letters = dead_letters  # where a decision that could not be published waits for a re-drive
        # What prod runs now, in words, for the confirm page (set by the wiring; '' when unknown).
        self.prod_runs: Callable[[ReleaseState], str] = lambda release: ""
        # What the release brings since prod's commit (shared/app/compare.py), asked once per
        # approval request and kept on the release by the dispatcher; None: the push's own list.
        self.compare_changes: Callable[[ReleaseState], dict[str, Any]] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: ApprovalStore,
        publisher: EventPublisher,
        clock: Clock,
        releases: ReleaseStore | None = None,
        link_senders: Sequence[LinkSender] | None = None,
        dead_letters: DeadLetterStore | None = None,
        signing: bool = True,
    ) -> "ApprovalService":
        """Keys from RELEASE_APPROVAL_KEYS, links by mail when RELEASE_SMTP_HOST is set, and the
        release readers from ``releases`` (needed by ``handle``, not by ``request``). Links are
        bearer credentials and go to personal channels only; the gate's own Notify command
        tells the shared channels that an approval is needed."""
        from shared.adapters.notify.multi import link_senders_from_settings

        readers = release_readers(releases) if releases is not None else (None, None, None)
        return cls(
            settings,
            store,
            Keyring.from_setting(settings.approval_keys) if signing else None,
            publisher,
            clock,
            link_senders_from_settings(settings) if link_senders is None else link_senders,
            *readers,
            dead_letters=dead_letters,
        )

    # -- sending links (ApprovalRequester) -------------------------------------
    def request(self, release: ReleaseState, command: RequestApproval) -> Mapping[str, Any]:
        """One request and one personal link per approver. Safe to repeat: an open
        request for the same approver and attempt is reused and its link sent again."""
        if not self.link_senders:
            raise ConfigError("approval links need a personal channel: set RELEASE_SMTP_HOST")
        changes = self.compare_changes(release) if self.compare_changes else None
        sent = 0
        for approver in command.approvers:
            record = self.store.find_open(command.release_id, command.stage, command.attempt, approver)
            if record is None:
                record = ApprovalRecord(
                    nonce=new_nonce(),
                    release_id=command.release_id,
                    stage=command.stage,
                    attempt=command.attempt,
                    approver=approver,
                    expires_at=float(command.expires_at),
                    tag=release.tag,
                    created_at=self.clock.now(),
                    digest=command.digest,
                )
                self.store.create(record)
            subject, text = format_approval_link(release, command.stage, approver, self.link_for(record), record.expires_at)
            if self._send_link(approver, subject, text, release.release_id):
                sent += 1
        if command.approvers and not sent:
            raise TransientError("no approval link could be delivered", release_id=command.release_id, stage=command.stage)
        return {"links_sent": sent, **({"changes": changes} if changes is not None else {})}

    def unconfirmed(self, event: ApprovalDecided) -> str:
        record = self.store.get(event.nonce)
        if record is None:
            return f"no approval request {event.nonce[:6]}… was issued"
        decision = "approved" if event.approve else "rejected"
        recorded = (record.release_id, record.stage, record.attempt, record.approver, record.decision)
        if not record.consumed or recorded != (event.release_id, event.stage, event.attempt, event.approver, decision):
            return "the event does not match the decision recorded through its link"
        return ""

    def _keys(self) -> Keyring:
        if self.keyring is None:
            raise ConfigError("this ApprovalService was built without RELEASE_APPROVAL_KEYS (signing=False)")
        return self.keyring

    def link_for(self, record: ApprovalRecord) -> str:
        claims = LinkClaims(
            record.release_id, record.stage, record.attempt, record.approver, record.nonce, record.tag, record.expires_at,
            record.digest,
        )
        return f"{self.settings.approval_base_url.rstrip('/')}/?token={quote(sign(claims, self._keys()), safe='')}"

    def _send_link(self, approver: str, subject: str, text: str, release_id: str) -> bool:
        delivered = False
        for sender in self.link_senders:
            try:
                sender.send_link(approver, subject, text)
                delivered = True
            except NotifyError as exc:
                log.warning("approval link for release %s via %s failed: %s", release_id, sender.name, exc)
        return delivered

    # -- the on_approval function ---------------------------------------------
    def handle(self, method: str, query: Mapping[str, str], form: Mapping[str, str], headers: Mapping[str, str]) -> HttpAnswer:
        method = method.upper()
        if method not in ("GET", "HEAD", "POST"):
            return HttpAnswer(405, pages.refusal_page("Method not allowed", "Use the link (GET) or the form (POST)."),
                              {**pages.SECURITY_HEADERS, "Allow": "GET, HEAD, POST"})
        token = (form.get("token") if method == "POST" else None) or query.get("token") or ""
        try:
            checked = self._check(token, self.clock.now())
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

    def _check(self, token: str, now: float) -> _Checked:
        if self.get_release is None or self.get_stage is None:
            raise ConfigError("ApprovalService.handle needs get_release and get_stage")
        return self._check_claims(verify(token, self._keys(), now), now)

    def _check_claims(self, claims: LinkClaims, now: float) -> _Checked:
        """Every rule a decision must pass, for a link's verified claims or an operator's request."""
        record = self.store.get(claims.nonce)
        if record is None:
            raise ApprovalRefused(404, "Unknown request", "this approval request does not exist")
        expected = (record.release_id, record.stage, record.attempt, record.approver, record.tag, record.expires_at,
                    record.digest)
        if expected != (claims.release_id, claims.stage, claims.attempt, claims.approver, claims.tag, claims.expires_at,
                        claims.digest):
            raise ApprovalRefused(403, "Link not valid", "the link does not match the approval request it names")
        if record.consumed:
            raise ApprovalRefused(
                409, "Link already used",
                f"this link was already used: {record.decision} at {pages._when(record.consumed_at)}",
            )
        release = self.get_release(claims.release_id)
        if release is None:
            raise ApprovalRefused(404, "Release not found", f"release {claims.release_id} does not exist")
        stage = self.get_stage(release)
        st = release.stages.get(claims.stage)
        waiting = (
            stage.kind is StageKind.APPROVAL
            and stage.id == claims.stage
            and st is not None
            and st.status is StageStatus.WAITING
            and st.attempt == claims.attempt
            and release.status is ReleaseStatus.AWAITING_APPROVAL
            and release.tag == claims.tag
        )
        if not waiting:
            raise ApprovalRefused(
                409, "No longer waiting",
                f"release {release.release_id} is {release.status.value} and no longer waits for this approval request "
                f"(stage {claims.stage}, attempt {claims.attempt})",
            )
        if st.deadline is not None and now > st.deadline:
            raise ApprovalRefused(410, "Link expired", f"the approval of release {release.release_id} has expired")
        refused = approval_refusal(claims.approver, stage.params["approvers"], release.pusher, release.pushed_by)
        if refused:
            raise ApprovalRefused(403, "Not allowed", f"{stage.label}: {refused}")
        return _Checked(claims, record, release, stage)

    def _decide(self, checked: _Checked, form: Mapping[str, str], headers: Mapping[str, str]) -> HttpAnswer:
        choice = form.get("decision") or ""
        if choice not in DECISIONS:
            raise ApprovalRefused(400, "No decision", "choose Approve or Reject on the page")
        claims = checked.claims
        reason = (form.get("reason") or "").strip()[:MAX_REASON_CHARS]
        if choice == "reject" and not reason:
            raise ApprovalRefused(400, "Reason needed", "a rejection needs a reason; go back and write why")
        user_agent = _header(headers, "User-Agent")[:MAX_USER_AGENT_CHARS]
        if not self.store.consume(claims.nonce, DECISIONS[choice], reason, user_agent, self.clock.now()):
            raise ApprovalRefused(409, "Link already used", "this link was used a moment ago by another request")
        record = self.store.get(claims.nonce)
        try:
            self._publish(record)
        except Exception as exc:  # noqa: BLE001 - the decision is kept; say so instead of a bare 500
            log.error("approval of release %s recorded but not published: %s", claims.release_id, type(exc).__name__)
            self._keep_for_redrive(record, type(exc).__name__)
            return HttpAnswer(503, pages.refusal_page(
                "Decision recorded, not yet delivered",
                "your decision was saved but could not be passed to the pipeline; an operator re-drives it "
                "from the dead letters (nothing else is needed from you, and the link cannot be used again)",
                unchanged=False,
            ), dict(pages.SECURITY_HEADERS))
        answer = pages.done_page(choice == "approve", claims.release_id, claims.tag, claims.approver)
        return HttpAnswer(200, answer, dict(pages.SECURITY_HEADERS))

    # -- relctl approve / reject (through the operator function) ------------------
    def decide_as(self, approver: str, release_id: str, approve: bool, reason: str, via: str) -> Mapping[str, Any]:
        """An approver's decision sent with their verified Google identity instead of a link.

        It uses the approval request their link would carry (one per approver and attempt),
        so every rule of the link holds: the approver list, no self-approval, the attempt
        still waiting and not expired, one decision per request. Raises ApprovalRefused."""
        if self.get_release is None or self.get_stage is None:
            raise ConfigError("ApprovalService.decide_as needs get_release and get_stage")
        release = self.get_release(release_id)
        if release is None:
            raise ApprovalRefused(404, "Release not found", f"release {release_id} does not exist")
        stage = self.get_stage(release)
        st = release.stages.get(stage.id)
        # The same rule as the link (normalised identities, fails closed on an unmatched pusher),
        # before looking for a request, so a refusal says why rather than "nothing to decide".
        refused = approval_refusal(approver, stage.params["approvers"], release.pusher, release.pushed_by)
        if refused:
            raise ApprovalRefused(403, "Not allowed", f"{stage.label}: {refused}")
        attempt = st.attempt if st is not None else 0
        record = self.store.find_open(release_id, stage.id, attempt, approver)
        if record is None or st is None or st.status is not StageStatus.WAITING:
            raise ApprovalRefused(409, "Nothing to decide",
                                  f"release {release_id} has no open approval request for {approver} "
                                  f"(stage {stage.id} is {st.status.value if st else 'missing'}, attempt {attempt}; "
                                  "already decided, or no links were sent for this attempt)")
        now = self.clock.now()
        if now > record.expires_at:
            raise ApprovalRefused(410, "Link expired", f"the approval request of release {release_id} has expired")
        claims = LinkClaims(record.release_id, record.stage, record.attempt, record.approver, record.nonce,
                            record.tag, record.expires_at, record.digest)
        answer = self._decide(self._check_claims(claims, now),
                              {"decision": "approve" if approve else "reject", "reason": reason}, {"User-Agent": via})
        if answer.status != 200:
            raise ApprovalRefused(answer.status, "Not delivered", "the decision was recorded but not yet published; "
                                  "an operator re-drives it from the dead letters")
        return {"release_id": release_id, "stage": stage.id, "attempt": record.attempt,
                "decision": "approved" if approve else "rejected", "approver": approver}

    def _publish(self, record: ApprovalRecord) -> str:
        message_id = self.publisher.publish(self.settings.events_topic, _decided(record))
        self.store.mark_published(record.nonce, message_id)
        return message_id

    def _keep_for_redrive(self, record: ApprovalRecord, why: str) -> None:
        """The one dead-letter store keeps the decision's event; ``DeadLetters.redrive`` publishes
        it (the gate applies a nonce once, and only when it matches this recorded decision)."""
        if self.dead_letters is None:
            return
        data, attributes = encode(_decided(record))
        self.dead_letters.record(DeadLetter(f"approval-{record.nonce}", f"approval decided, publish failed: {why}",
                                            "approval.decided", self.clock.now(), data, attributes))

    def _confirm(self, checked: _Checked, token: str) -> str:
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
            prod_runs=self.prod_runs(release),
            dashboard_url=(f"{self.settings.public_base_url.rstrip('/')}/release/{release.release_id}"
                           if self.settings.public_base_url else ""),
        )

    def _stage_rows(self, release: ReleaseState, approval: Stage) -> list[tuple[str, str, str, str]]:
        """The stages before the approval that ran, in pipeline order, each with its evidence in
        words (test counts, answers and latencies, the failure reason) rather than the raw result,
        and the link to its log (builds and jobs)."""
        from shared.ui.dashboard import stage_detail
        from shared.ui.notes import log_link

        if self.get_pipeline is None:
            return [(stage_id, st.status.value, st.reason[:200], log_link(st.result))
                    for stage_id, st in release.stages.items() if st.attempt and stage_id != approval.id]
        pipeline = self.get_pipeline(release)
        rows = []
        for stage in pipeline.stages[:pipeline.index(approval.id)]:
            st = release.stages.get(stage.id)
            if st is None or stage.optional or not st.attempt:
                continue
            rows.append((f"{stage.number} {stage.name}", st.status.value,
                         stage_detail(stage, st, release, pipeline)[:300], log_link(st.result)))
        return rows

    def _chaos(self, release: ReleaseState) -> dict[str, Any] | None:
        """The optional chaos stage's outcome. The verdict of ``python -m shared.domain.chaos`` reaches
        the stage result through $BUILDER_OUTPUT (events.builder_output spreads its keys there)."""
        if self.get_pipeline is not None:
            ids = [s.id for s in self.get_pipeline(release).stages if s.optional]
        else:
            ids = [sid for sid, st in release.stages.items() if sid == "chaos" or "passed" in st.result]
        for stage_id in ids:
            st = release.stages.get(stage_id)
            if st is not None and st.status not in (StageStatus.PENDING, StageStatus.SKIPPED):
                verdict = {k: st.result[k] for k in VERDICT_KEYS if k in st.result}
                return {"stage": stage_id, "status": st.status.value, **verdict}
        return None


def _decided(record: ApprovalRecord) -> ApprovalDecided:
    return ApprovalDecided("", record.release_id, record.stage, record.attempt, record.nonce, record.approver,
                           record.decision == "approved", record.expires_at, record.reason, record.user_agent)


def release_readers(releases: ReleaseStore) -> tuple[
    Callable[[str], ReleaseState | None], Callable[[ReleaseState], Stage], Callable[[ReleaseState], Pipeline]
]:
    """get_release / get_stage / get_pipeline over the ReleaseStore port (the pinned pipeline)."""

    def get_release(release_id: str) -> ReleaseState | None:
        found = releases.get(release_id)
        return found[0] if found else None

    def get_pipeline(release: ReleaseState) -> Pipeline:
        return releases.load_pipeline(release.pipeline_digest)

    def get_stage(release: ReleaseState) -> Stage:
        pipeline = get_pipeline(release)
        if pipeline.approval_index is None:
            raise ConfigError(f"pipeline {pipeline.name} has no approval stage", release_id=release.release_id)
        return pipeline.stages[pipeline.approval_index]

    return get_release, get_stage, get_pipeline


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), "")
    return str(value or "")
