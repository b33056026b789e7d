"""The small interfaces the service needs from the outside world.

Every Protocol of the application lives here. Each has a real adapter in
``shared/adapters/`` (Firestore, Pub/Sub, Cloud Build, Cloud Run, HTTP, SMTP) and a
fake in ``shared/testing/fakes.py`` that behaves the same way, for unit tests.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:  # annotations only: importing the domain here would put it on every function's cold start
    from shared.domain.app_record import AppRecord
    from shared.domain.analysis import AnalysisTarget, Criteria, Measurements
    from shared.domain.approval_record import ApprovalRecord
    from shared.domain.dead_letters import DeadLetter
    from shared.domain.commands import Notify, RequestApproval, StartStage
    from shared.domain.events import ApprovalDecided, BuildFinished, Event, LockGranted, Outcome, Superseded
    from shared.domain.pipeline import Pipeline, Stage
    from shared.domain.probes import ProbeTask
    from shared.domain.revision_history import ServiceHistory
    from shared.domain.state import ReleaseState, StageState
    from shared.domain.wire import Message


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""


class SystemClock:
    def now(self) -> float:
        return time.time()


class ReleaseStore(Protocol):
    def get(self, release_id: str) -> tuple[ReleaseState, Any] | None:
        """The state and an opaque version token for a conditional update."""

    def create(self, state: ReleaseState) -> bool:
        """Create the release; False when it exists already (create-only)."""

    def update(self, state: ReleaseState, token: Any) -> Any:
        """Write the whole state if unchanged since ``token``; raise StaleWrite otherwise."""

    def update_fields(self, release_id: str, fields: Mapping[tuple[str, ...], Any], token: Any) -> Any:
        """Write only the given field paths (("stages", id, "result") …), on the same condition."""

    def list_releases(self, limit: int = 50) -> list[ReleaseState]:
        """Newest first."""

    def list_due(self, now: float, limit: int, after: Any = None) -> tuple[list[tuple[ReleaseState, Any]], Any]:
        """Releases with ``wake_at <= now``, earliest first, with their version tokens; and the
        cursor of the next page (None when this was the last)."""

    def save_pipeline(self, pipeline: Pipeline) -> None:
        """Pin a definition by digest so running releases keep the one they started with."""

    def load_pipeline(self, digest: str) -> Pipeline:
        """The pinned definition; raises DefinitionError when unknown."""

    def claim_delivery(self, delivery_id: str, info: Mapping[str, Any]) -> bool:
        """Create-only record of a webhook delivery; False when seen before."""


class EventPublisher(Protocol):
    def publish(self, topic: str, message: Message) -> str:
        """Publish a typed event or notice, encoded by ``shared/domain/wire.py``; returns the
        message id. ``topic`` is a short name. A dict is refused (TypeError)."""


@dataclass(frozen=True)
class StageFinish:
    """A stage's end as an executor saw it (immediately, or later when polled)."""

    outcome: Outcome
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartResult:
    """What starting a stage left behind: handles to record (build id, execution,
    operation, URLs) and, for stages that end at once (HTTP checks), the finish."""

    handle: Mapping[str, Any] = field(default_factory=dict)
    finished: StageFinish | None = None


class StageExecutor(Protocol):
    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        """Start one attempt. Must be idempotent per ``command.stage_run_id``: look for
        an existing build/execution/revision carrying that id before starting another.
        Raise ExecutorError for permanent failures (fails the stage),
        TransientError for ones worth retrying (the event is redelivered)."""

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        """For the sweeper: the finish of a running stage, or None while it runs.
        Executors whose completion arrives as an event (Cloud Build) return None."""


class ApprovalRequester(Protocol):
    def request(self, release: ReleaseState, command: RequestApproval) -> Mapping[str, Any]:
        """Create the approval requests and send each approver a personal link."""

    def unconfirmed(self, event: ApprovalDecided) -> str:
        """Why the event is not backed by a decision recorded through a signed link ("" when it is).

        Anyone who may publish events could otherwise publish an approval."""


class Notifier(Protocol):
    def notify(self, release: ReleaseState, notice: Notify) -> None:
        """Tell people about a failure, a needed approval or a finished release."""


class ProbeScheduler(Protocol):
    def schedule(self, task: ProbeTask, at: float) -> bool:
        """Have the probe function called with ``task`` at ``at`` (epoch seconds), once.

        Idempotent by ``task.task_id``: False when that task exists already (a repeated
        start or a redelivered probe), which is not an error."""


class HttpProber(Protocol):
    def get(self, url: str, timeout_s: float, audience: str = "") -> Mapping[str, Any]:
        """One GET: {"status": int | None, "latency_ms": float | None, "error": str}. With an
        ``audience`` the GET carries a Google ID token for it (a service that requires authentication)."""


class IdTokenSource(Protocol):
    def token(self, audience: str) -> str:
        """A Google ID token of the account the checks run as, with ``audience``; TransientError if none."""


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Mapping[str, Any]:
        """The claims of a valid ID token (signature, audience, expiry, issuer checked).

        Raise RequestRefused(401) for a token that does not verify, TransientError when
        the issuer's certificates cannot be fetched."""


class OperatorRequestLog(Protocol):
    """Who asked for what, through the operator function (``operator_requests/{id}``)."""

    def record(self, request_id: str, request: Mapping[str, Any]) -> bool:
        """Create-only; False when a request with this id exists already."""

    def get(self, request_id: str) -> Mapping[str, Any] | None:
        ...


class AppRecords(Protocol):
    """The per-application record ``apps/{app}`` (shared/domain/app_record.py): its locks per
    environment, its version floor, freeze and per-stage duration medians."""

    def read(self, app: str) -> tuple[AppRecord, Any]:
        """The record (the empty ``AppRecord()`` when never written) and a token for ``write``."""

    def write(self, app: str, record: AppRecord, token: Any) -> None:
        """Raise StaleWrite when the record changed since ``token`` (or exists, for None)."""


class ServiceLockRecords(Protocol):
    """``service_locks/{service}``: the locks of a Cloud Run service shared by applications, the
    mapping shared/app/service_locks.py describes, with the same conditional write."""

    def read(self, service: str) -> tuple[dict[str, Any], Any]: ...

    def write(self, service: str, data: dict[str, Any], token: Any) -> None: ...


class MessageDecoder(Protocol):
    """A Pub/Sub message as what the dispatcher handles, decoded once: ours by the wire format
    (shared/domain/wire.py), Cloud Build's notification into a BuildFinished (its adapter,
    shared/adapters/cloud_build_notification.py); None for a build notification that ends no
    stage; MalformedEvent naming why when it cannot be decoded."""

    def __call__(self, event_id: str, attributes: Mapping[str, str], data: bytes) -> Event | BuildFinished | None: ...


class Locks(Protocol):
    """One release at a time per application and environment, kept in ``apps/{app}`` (and the
    services' locks in ``service_locks/{service}``): shared/app/locks.py implements it over
    ``AppRecords``, so the Firestore record and the in-memory fake run the same rules."""

    def acquire(self, app: str, environment: str, release_id: str, created_at: float, version: str = "",
                services: tuple[str, ...] = ()) -> str:
        """'granted', 'queued' or 'superseded'; the matching event is published."""

    def release(self, app: str, environment: str, release_id: str) -> str | None:
        """Give the lock back (or leave its queue); the release it passes to, if any."""

    def confirms(self, app: str, event: LockGranted | Superseded) -> str:
        """Why the application's record does not back this lock event ("" when it does)."""

    def record_durations(self, app: str, release_id: str, durations: Mapping[str, float]) -> None:
        """A finished release's stage durations into the same record (the ETA's medians), once."""


class ApprovalStore(Protocol):
    def create(self, record: ApprovalRecord) -> bool:
        """Create-only; False when the nonce exists already."""

    def get(self, nonce: str) -> ApprovalRecord | None: ...

    def find_open(self, release_id: str, stage: str, attempt: int, approver: str) -> ApprovalRecord | None:
        """An unconsumed request for exactly this approver and attempt, to resend its link."""

    def consume(self, nonce: str, decision: str, reason: str, user_agent: str, now: float) -> bool:
        """Record the decision; True for exactly one caller per nonce, False once used.
        Raises ApprovalNotFound when there is no such request."""

    def mark_published(self, nonce: str, message_id: str) -> None: ...


class LinkSender(Protocol):
    """A channel that reaches one person (mail); raises NotifyError when it cannot."""

    name: str

    def send_link(self, approver: str, subject: str, text: str) -> None: ...


class Telemetry(Protocol):
    def measure(self, criteria: Criteria, target: AnalysisTarget, start: Any, end: Any) -> Measurements:
        """One window (``start``/``end`` are aware datetimes) of the target's request metrics and logs."""


class DeadLetterStore(Protocol):
    """The one place for messages that were not applied (``dead_letters/{id}``)."""

    def record(self, letter: DeadLetter) -> bool:
        """Create-only by id; False when it is kept already (a redelivery is recorded once)."""

    def get(self, letter_id: str) -> DeadLetter | None: ...

    def list(self, limit: int = 50) -> list[DeadLetter]:
        """Newest first."""

    def mark_redriven(self, letter_id: str, message_id: str, at: float) -> None: ...


@dataclass(frozen=True)
class ServingRevision:
    """One revision that takes traffic now, as the Cloud Run API reports it."""

    revision: str
    percent: int
    tag: str = ""
    image: str = ""
    version: str = ""  # the revision's labels (shared/adapters/executors/traffic.py release_labels)
    commit: str = ""
    created_at: float | None = None


class ServiceReader(Protocol):
    """What a Cloud Run service serves now (adapter: shared/adapters/cloud_run_reader.py)."""

    def serving(self, service: str) -> list[ServingRevision]:
        """Every revision with a share or a tag; [] when the service does not exist."""
        ...


class RevisionHistories(Protocol):
    """``revision_history/{service}``: one revision history per Cloud Run service
    (shared/domain/revision_history.py), changed by compare-and-set."""

    def read(self, service: str) -> "ServiceHistory":
        """The service's history (empty when nothing was recorded)."""

    def change(self, service: str, change: "Callable[[ServiceHistory], ServiceHistory]") -> "ServiceHistory":
        """Apply ``change`` to the stored history and write it if nothing changed it meanwhile,
        re-reading and re-applying otherwise; returns what was written."""


# -- GitHub deployments and commit statuses (shared/app/github_reporting.py) ---------------------
class GitHubDeployments(Protocol):
    def find_deployment(self, repo: str, sha: str, environment: str, release_id: str) -> int | None: ...

    def create_deployment(self, repo: str, body: Mapping[str, Any]) -> int: ...

    def create_deployment_status(self, repo: str, deployment_id: int, body: Mapping[str, Any]) -> None: ...

    def create_commit_status(self, repo: str, sha: str, body: Mapping[str, Any]) -> None: ...


class GitHubLedger(Protocol):
    """What was reported of each release (``github_reports/{release_id}``)."""

    def claim(self, release_id: str, now: float, lease_s: float) -> dict[str, Any] | None:
        """The record (created empty), leased to the caller; None while another holds the lease (the
        record is then marked due, so the holder's work is followed by another sync)."""

    def save(self, release_id: str, record: dict[str, Any]) -> None:
        """Write the record and give back the lease."""

    def get(self, release_id: str) -> dict[str, Any] | None: ...

    def due(self, now: float, limit: int = 20) -> list[str]:
        """Releases whose reports wait for a retry that is due."""
