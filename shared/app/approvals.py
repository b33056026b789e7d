"""Approval by signed link: send personal links, check a link, take the decision.

``ApprovalService.request`` implements the ApprovalRequester port for the dispatcher.
``check_link`` and ``decide`` are what the ``on_approval`` function's HTTP side
(``shared/ui/approval_http.py``: request parsing and the pages) calls; this module returns
decisions and data, never HTML.

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

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from shared.domain.identity import approval_refusal
from shared.domain.approval_record import ApprovalRecord
from shared.domain.approval_tokens import Keyring, LinkClaims, sign, verify
from shared.domain.commands import RequestApproval
from shared.app.config import Settings
from shared.domain.errors import ConfigError, NotifyError, PipelineError, TransientError
from shared.domain.events import ApprovalDecided
from shared.domain.pipeline import Pipeline, Stage, StageKind
from shared.app.ports import ApprovalStore, Clock, DeadLetterStore, EventPublisher, LinkSender, ReleaseStore
from shared.domain.dead_letters import DeadLetter
from shared.domain.wire import encode
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
MAX_USER_AGENT_CHARS = 300
DECISIONS = {"approve": "approved", "reject": "rejected"}


class ApprovalRefused(PipelineError):
    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status = status
        self.title = title


@dataclass(frozen=True)
class Checked:
    """A link (or an operator's request) that passed every rule: what the confirm page shows."""

    claims: LinkClaims
    record: ApprovalRecord
    release: ReleaseState
    stage: Stage


@dataclass(frozen=True)
class Decided:
    """A decision taken and recorded; ``delivered`` False: kept for a re-drive, not yet published."""

    record: ApprovalRecord
    approved: bool
    delivered: bool


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
        prod_runs: Callable[[ReleaseState], str] | None = None,
        compare_changes: Callable[[ReleaseState], dict[str, Any]] | None = None,
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
        self.prod_runs: Callable[[ReleaseState], str] = prod_runs or (lambda release: "")
        # What the release brings since prod's commit (shared/app/compare.py), asked once per
        # approval request and kept on the release by the dispatcher; None: the push's own list.
        self.compare_changes = compare_changes

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        store: ApprovalStore,
        publisher: EventPublisher,
        clock: Clock,
        releases: ReleaseStore | None = None,
        link_senders: Sequence[LinkSender] = (),
        dead_letters: DeadLetterStore | None = None,
        signing: bool = True,
        prod_runs: Callable[[ReleaseState], str] | None = None,
        compare_changes: Callable[[ReleaseState], dict[str, Any]] | None = None,
    ) -> "ApprovalService":
        """Keys from RELEASE_APPROVAL_KEYS and the release readers from ``releases`` (needed by
        ``check_link``, not by ``request``). Links are bearer credentials and go to personal
        channels only (``link_senders``, built by shared/bootstrap.py); the gate's own Notify
        command tells the shared channels that an approval is needed."""
        readers = release_readers(releases) if releases is not None else (None, None, None)
        return cls(
            settings,
            store,
            Keyring.from_setting(settings.approval_keys) if signing else None,
            publisher,
            clock,
            link_senders,
            *readers,
            dead_letters=dead_letters,
            prod_runs=prod_runs,
            compare_changes=compare_changes,
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

    # -- the on_approval function (its HTTP side: shared/ui/approval_http.py) -----
    def check_link(self, token: str) -> Checked:
        """Every rule for a link's token, now. Raises TokenError or ApprovalRefused."""
        if self.get_release is None or self.get_stage is None:
            raise ConfigError("ApprovalService.check_link needs get_release and get_stage")
        now = self.clock.now()
        return self._check_claims(verify(token, self._keys(), now), now)

    def _check_claims(self, claims: LinkClaims, now: float) -> Checked:
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
                f"this link was already used: {record.decision} at {_when(record.consumed_at)}",
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
        return Checked(claims, record, release, stage)

    def decide(self, checked: Checked, choice: str, reason: str, user_agent: str) -> Decided:
        """Consume the request once and publish ``approval.decided``; a decision that cannot be
        published is kept for a re-drive (``delivered`` False). Raises ApprovalRefused."""
        if choice not in DECISIONS:
            raise ApprovalRefused(400, "No decision", "choose Approve or Reject on the page")
        claims = checked.claims
        reason = reason.strip()[:MAX_REASON_CHARS]
        if choice == "reject" and not reason:
            raise ApprovalRefused(400, "Reason needed", "a rejection needs a reason; go back and write why")
        user_agent = user_agent[:MAX_USER_AGENT_CHARS]
        if not self.store.consume(claims.nonce, DECISIONS[choice], reason, user_agent, self.clock.now()):
            raise ApprovalRefused(409, "Link already used", "this link was used a moment ago by another request")
        record = self.store.get(claims.nonce)
        try:
            self._publish(record)
        except Exception as exc:  # noqa: BLE001 - the decision is kept; the caller says so instead of a bare 500
            log.error("approval of release %s recorded but not published: %s", claims.release_id, type(exc).__name__)
            self._keep_for_redrive(record, type(exc).__name__)
            return Decided(record, choice == "approve", delivered=False)
        return Decided(record, choice == "approve", delivered=True)

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
        decided = self.decide(self._check_claims(claims, now), "approve" if approve else "reject", reason, via)
        if not decided.delivered:
            raise ApprovalRefused(503, "Not delivered", "the decision was recorded but not yet published; "
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


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_approval_link(release: ReleaseState, stage: str, approver: str, link: str, expires_at: float) -> tuple[str, str]:
    """(subject, plain text) of the personal mail that carries an approval link."""
    expiry = dt.datetime.fromtimestamp(expires_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subject = f"Approval needed: release {release.release_id} ({release.tag})"
    text = "\n".join(
        [
            f"Hello {approver},",
            "",
            f"Release {release.release_id} (version {release.version}, tag {release.tag}, "
            f"commit {release.commit[:12]}) passed staging and waits for your decision at stage {stage}.",
            "",
            "Open this personal link to review it; opening the link changes nothing,",
            "the decision is made with the Approve / Reject buttons on the page:",
            "",
            link,
            "",
            f"The link works once and expires at {expiry}. Do not forward it.",
        ]
    )
    return subject, text
