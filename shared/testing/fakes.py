"""Fakes of the ports that behave like the real adapters, for unit tests.

They keep the same contracts: create-only records refuse a second create, a stale
update raises StaleWrite, published messages get ids, executors are idempotent per
stage-run id. A fake that is kinder than the real thing hides bugs.
"""
from __future__ import annotations

import collections
import copy
import itertools
import json
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Mapping

from shared.domain.commands import Notify, RequestApproval, StartStage
from shared.adapters.notify.errors import NotifyError
from shared.domain.errors import DefinitionError, DocumentTooLarge, StaleWrite, TransientError
from shared.domain.pipeline import Pipeline, Stage, pipeline_from_stored, stored_pipeline
from shared.app.config import Settings
from shared.app.locks import EnvironmentLocks
from shared.adapters.app_record_doc import decode_app_record, encode_app_record
from shared.app.ports import StageFinish, StartResult
from shared.app.service_locks import service_record
from shared.domain.dead_letters import MAX_KEPT_BYTES, DeadLetter
from shared.domain.approval_record import ApprovalNotFound, ApprovalRecord, decision_fields
from shared.domain.state import ReleaseState, StageState
from shared.domain.wire import Message, encode


FIRESTORE_MAX_DOCUMENT_BYTES = 1_048_576

class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeTime:
    """A monotonic clock whose ``sleep`` moves it on at once (retry loops without waiting)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class FakeStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[dict, int]] = {}
        self._pipelines: dict[str, str] = {}
        self._parsed: dict[str, Pipeline] = {}
        self.deliveries: dict[str, dict] = {}
        self.reads = 0
        self.writes = 0

    def get(self, release_id: str):
        with self._lock:
            self.reads += 1
            if release_id not in self._docs:
                return None
            data, version = self._docs[release_id]
            return ReleaseState.from_dict(copy.deepcopy(data)), version

    def create(self, state: ReleaseState) -> bool:
        with self._lock:
            if state.release_id in self._docs:
                return False
            self.writes += 1
            self._docs[state.release_id] = (state.to_dict(), 1)
            return True

    def update(self, state: ReleaseState, token: Any) -> Any:
        with self._lock:
            _, version = self._docs[state.release_id]
            if version != token:
                raise StaleWrite("release changed since it was read", release_id=state.release_id)
            return self._write(state.release_id, state.to_dict(), version)

    def update_fields(self, release_id: str, fields: Mapping[tuple[str, ...], Any], token: Any) -> Any:
        with self._lock:
            data, version = self._docs[release_id]
            if version != token:
                raise StaleWrite("release changed since it was read", release_id=release_id)
            data = copy.deepcopy(data)
            for path, value in fields.items():
                target = data
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = copy.deepcopy(value)
            return self._write(release_id, data, version)

    def _write(self, release_id: str, data: dict, version: int) -> int:
        """Like Firestore, a write that changes nothing keeps the update time (the token),
        and a document over 1 MiB is refused (estimated from its JSON size)."""
        if len(json.dumps(data, default=str)) > FIRESTORE_MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge("maximum entity size is 1048576 bytes", release_id=release_id)
        self.writes += 1
        if data == self._docs[release_id][0]:
            return version
        self._docs[release_id] = (data, version + 1)
        return version + 1

    def list_releases(self, limit: int = 50) -> list[ReleaseState]:
        with self._lock:
            states = [ReleaseState.from_dict(copy.deepcopy(d)) for d, _ in self._docs.values()]
        return sorted(states, key=lambda s: s.created_at, reverse=True)[:limit]

    def list_due(self, now: float, limit: int, after: Any = None):
        with self._lock:
            due = sorted(((d["wake_at"], rid, v) for rid, (d, v) in self._docs.items()
                          if d.get("wake_at") is not None and d["wake_at"] <= now))
            if after is not None:
                due = [x for x in due if (x[0], x[1]) > after]
            page = due[:limit]
            self.reads += max(1, len(page))  # as Firestore bills a query: per document, at least one
            states = [(ReleaseState.from_dict(copy.deepcopy(self._docs[rid][0])), v) for _, rid, v in page]
        return states, ((page[-1][0], page[-1][1]) if len(page) == limit else None)

    def save_pipeline(self, pipeline: Pipeline) -> None:
        self._pipelines[pipeline.digest] = json.dumps(stored_pipeline(pipeline))

    def load_pipeline(self, digest: str) -> Pipeline:
        if digest not in self._pipelines:
            raise DefinitionError(f"pipeline {digest[:12]} is not stored")
        if digest not in self._parsed:  # cached like the Firestore store does
            self._parsed[digest] = pipeline_from_stored(json.loads(self._pipelines[digest]))
        return self._parsed[digest]

    def claim_delivery(self, delivery_id: str, info: Mapping[str, Any]) -> bool:
        with self._lock:
            if delivery_id in self.deliveries:
                return False
            self.deliveries[delivery_id] = dict(info)
            return True


class FakeDeadLetters:
    """The dead-letter store: create-only by id, newest first, like Firestore's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.letters: dict[str, DeadLetter] = {}

    def record(self, letter: DeadLetter) -> bool:
        with self._lock:
            if letter.id in self.letters:
                return False
            self.letters[letter.id] = replace(letter, data=letter.data[:MAX_KEPT_BYTES])
            return True

    def get(self, letter_id: str) -> DeadLetter | None:
        return self.letters.get(letter_id)

    def list(self, limit: int = 50) -> list[DeadLetter]:
        return sorted(self.letters.values(), key=lambda d: d.received_at, reverse=True)[:limit]

    def mark_redriven(self, letter_id: str, message_id: str, at: float) -> None:
        with self._lock:
            self.letters[letter_id] = replace(self.letters[letter_id], redriven_as=message_id, redriven_at=at)


# The link keys of every test rig: what the dispatcher checks completions against.
TEST_LINK_KEYS = "kt:test-link-keys-of-32-bytes-or-more"


def rig_keyring():
    from shared.domain.approval_tokens import Keyring

    return Keyring.from_setting(TEST_LINK_KEYS)


def signed(event):
    """A stage.finished as our functions publish it: signed with the rigs' link keys."""
    from shared.domain.completions import sign_finish

    return sign_finish(event, rig_keyring())


def signed_bytes(payload: Mapping[str, Any]) -> bytes:
    """A stage.finished payload, written as a dict by a test, as signed bytes on the wire."""
    from shared.domain.wire import from_payload

    return encode(signed(from_payload("", dict(payload))))[0]


def signing(publisher):
    """``publisher`` behind the signer the functions use (shared/app/signing_publisher.py)."""
    from shared.app.signing_publisher import SigningPublisher

    return SigningPublisher(publisher, rig_keyring)


class FakePublisher:
    """Keeps what is published, encoded by the one wire format like the real publisher,
    with ids like Pub/Sub's; ``fail = True`` makes it raise TransientError as an
    unreachable Pub/Sub would. ``messages`` holds (topic, payload, attributes)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict, dict]] = []
        self.fail = False
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def publish(self, topic: str, message: Message) -> str:
        data, attributes = encode(message)
        if self.fail:
            raise TransientError("publisher is down")
        with self._lock:
            self.messages.append((topic, json.loads(data), attributes))
            return f"msg-{next(self._ids)}"

    def of_type(self, message_type: str) -> list[dict]:
        return [data for _, data, _ in self.messages if data.get("type") == message_type]


class FakeExecutor:
    """Counts starts per stage-run id; idempotent per stage-run id like the real executors.

    ``finish_at_once`` ends every stage at its start (like an HTTP check); ``delay_s``
    and ``hook`` run inside ``start`` (a slow start, a crash at a chosen moment);
    ``poll_results`` is what the sweeper's poll finds, by stage-run id."""

    def __init__(self, finish_at_once: StageFinish | None = None, delay_s: float = 0.0,
                 hook: Callable[[StartStage], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.started: dict[str, StartStage] = {}
        self.starts: collections.Counter[str] = collections.Counter()
        self.commands: list[StartStage] = []  # every start, in order
        # What the real executors create per stage-run id: a start looks for the run's build
        # first and reuses it, unless it is ``known_new`` (then it creates one whatever exists).
        self.created: collections.Counter[str] = collections.Counter()
        self.finish_at_once = finish_at_once
        self.delay_s = delay_s
        self.hook = hook
        self.poll_results: dict[str, StageFinish] = {}

    @property
    def start_calls(self) -> int:
        return sum(self.starts.values())

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        with self._lock:
            self.starts[command.stage_run_id] += 1
            self.started.setdefault(command.stage_run_id, command)
            self.commands.append(command)
            if command.known_new or not self.created[command.stage_run_id]:
                self.created[command.stage_run_id] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.hook is not None:
            self.hook(command)
        return StartResult(handle={"fake_run": command.stage_run_id}, finished=self.finish_at_once)

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        return self.poll_results.get(state.stage_run_id)


class FakeApprovals:
    """Confirms only decisions the test recorded with ``confirm``, like the real link records."""

    def __init__(self) -> None:
        self.requests: list[RequestApproval] = []
        self.confirmed: set[str] = set()

    def request(self, release: ReleaseState, command: RequestApproval) -> Mapping[str, Any]:
        self.requests.append(command)
        return {"links_sent": len(command.approvers)}

    def confirm(self, nonce: str) -> None:
        self.confirmed.add(nonce)

    def unconfirmed(self, event) -> str:
        return "" if event.nonce in self.confirmed else f"no approval request {event.nonce} was issued"


class FakeLinkSender:
    """The LinkSender port: keeps what it sends; refuses the approvers in ``fail_for``."""

    name = "recording"

    def __init__(self, fail_for: tuple[str, ...] = ()) -> None:
        self.sent: list[tuple[str, str, str]] = []
        self.fail_for = fail_for

    def send_link(self, approver: str, subject: str, text: str) -> None:
        if approver in self.fail_for:
            raise NotifyError("mailbox unreachable")
        self.sent.append((approver, subject, text))


class FakeNotifier:
    def __init__(self) -> None:
        self.notices: list[Notify] = []

    def notify(self, release: ReleaseState, notice: Notify) -> None:
        self.notices.append(notice)


class FakeProbeScheduler:
    """Keeps scheduled probes in memory; refuses a task id twice, as Cloud Tasks does.

    Tests (and in-process benchmarks) run what is due with ``take_due``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending: dict[str, tuple[float, Any]] = {}
        self.seen: set[str] = set()
        self.scheduled = 0

    def schedule(self, task, at: float) -> bool:
        with self._lock:
            if task.task_id in self.seen:
                return False
            self.seen.add(task.task_id)
            self.pending[task.task_id] = (at, task)
            self.scheduled += 1
            return True

    def next_at(self) -> float | None:
        with self._lock:
            return min((at for at, _ in self.pending.values()), default=None)

    def take_due(self, now: float) -> list:
        with self._lock:
            due = sorted((at, tid) for tid, (at, _) in self.pending.items() if at <= now)
            return [self.pending.pop(tid)[1] for _, tid in due]


class FakeOperatorRequests:
    """``operator_requests`` in memory: create-only like the Firestore collection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}

    def record(self, request_id: str, request: Mapping[str, Any]) -> bool:
        with self._lock:
            if request_id in self.records:
                return False
            self.records[request_id] = copy.deepcopy(dict(request))
            return True

    def get(self, request_id: str) -> Mapping[str, Any] | None:
        with self._lock:
            found = self.records.get(request_id)
            return copy.deepcopy(found) if found is not None else None


class InMemoryApprovalStore:
    """The fake: same contract as the Firestore store, one lock instead of preconditions."""

    def __init__(self) -> None:
        self._records: dict[str, ApprovalRecord] = {}
        self._lock = threading.Lock()

    def create(self, record: ApprovalRecord) -> bool:
        with self._lock:
            if record.nonce in self._records:
                return False
            self._records[record.nonce] = record
            return True

    def get(self, nonce: str) -> ApprovalRecord | None:
        with self._lock:
            return self._records.get(nonce)

    def find_open(self, release_id: str, stage: str, attempt: int, approver: str) -> ApprovalRecord | None:
        with self._lock:
            for r in self._records.values():
                if (r.release_id, r.stage, r.attempt, r.approver) == (release_id, stage, attempt, approver) and not r.consumed:
                    return r
        return None

    def consume(self, nonce: str, decision: str, reason: str, user_agent: str, now: float) -> bool:
        fields = decision_fields(decision, reason, user_agent, now)
        with self._lock:
            record = self._records.get(nonce)
            if record is None:
                raise ApprovalNotFound(f"no approval request {nonce[:6]}…")
            if record.consumed:
                return False
            self._records[nonce] = replace(record, **fields)
            return True

    def mark_published(self, nonce: str, message_id: str) -> None:
        with self._lock:
            self._records[nonce] = replace(self._records[nonce], message_id=message_id)


class InMemoryAppRecords:
    """The fake of ``apps/{app}`` (and, with ``service_record`` and ``dict``, of ``service_locks/{service}``):
    the same contract as the Firestore records, in memory, through the same stored document."""

    def __init__(self, decode: Callable[[Any], Any] = decode_app_record,
                 encode: Callable[[Any], dict[str, Any]] = encode_app_record) -> None:
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[dict[str, Any], int]] = {}
        self._decode, self._encode = decode, encode

    def read(self, app: str) -> tuple[Any, Any]:
        with self._lock:
            if app not in self._docs:
                return self._decode(None), None
            data, version = self._docs[app]
            return self._decode(copy.deepcopy(data)), version

    def write(self, app: str, record: Any, token: Any) -> None:
        with self._lock:
            current = self._docs.get(app)
            if (current is None) != (token is None) or (current is not None and current[1] != token):
                raise StaleWrite(f"application record {app} changed since it was read")
            self._docs[app] = (copy.deepcopy(self._encode(record)), (current[1] if current else 0) + 1)


def in_memory_service_lock_records() -> InMemoryAppRecords:
    return InMemoryAppRecords(service_record, dict)


class FakeLocks(EnvironmentLocks):
    """The Locks port in memory: the same rules as production (shared/app/locks.py) over
    in-memory records, so a test's locks queue, supersede and hold a version floor as the
    Firestore records do (tests/integration/test_port_contracts.py runs both)."""

    def __init__(self, publisher: Any = None, settings: Settings | None = None) -> None:
        super().__init__(InMemoryAppRecords(), publisher if publisher is not None else FakePublisher(),
                         settings or Settings(), in_memory_service_lock_records())


class FakeTelemetry:
    """The Telemetry port from canned measurements, or raising what a client would raise."""

    def __init__(self, measurements=None, error: Exception | None = None):
        self.measurements = measurements
        self.error = error
        self.calls: list[tuple] = []

    def measure(self, criteria, target, start, end):
        self.calls.append((criteria, target, start, end))
        if self.error is not None:
            raise self.error
        return self.measurements


class FakeRevisionHistories:
    """``revision_history/{service}`` in memory: the change is applied under a lock, so concurrent
    changes are never lost, as the Firestore adapter's compare-and-set guarantees."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.histories: dict[str, Any] = {}

    def read(self, service: str):
        from shared.domain.revision_history import ServiceHistory

        with self._lock:
            return self.histories.get(service) or ServiceHistory(service)

    def change(self, service: str, change):
        from shared.domain.revision_history import ServiceHistory, history_from_dict, history_to_dict

        with self._lock:
            before = self.histories.get(service) or ServiceHistory(service)
            after = change(before)
            # Through the stored form, like Firestore: what cannot be stored fails here too.
            self.histories[service] = history_from_dict(history_to_dict(after), service)
            return self.histories[service]


class FakeGitHubLedger:
    """``github_reports/{id}`` in memory, leased like the Firestore one (shared/adapters/firestore_github_reports.py)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def get(self, release_id: str) -> dict[str, Any] | None:
        from shared.app.github_reporting import empty_record

        found = self.records.get(release_id)
        if found is None:
            return None
        return {**empty_record(), **{k: v for k, v in copy.deepcopy(found).items() if k not in ("lease_until", "resync")}}

    def claim(self, release_id: str, now: float, lease_s: float) -> dict[str, Any] | None:
        from shared.app.github_reporting import empty_record

        record = {**empty_record(), **copy.deepcopy(self.records.get(release_id, {}))}
        if (record.get("lease_until") or 0) > now:
            self.records[release_id].update(retry_at=now, resync=True)
            return None
        self.records[release_id] = {**record, "lease_until": now + lease_s}
        for kept in ("lease_until", "resync"):
            record.pop(kept, None)
        return record

    def save(self, release_id: str, record: dict[str, Any]) -> None:
        stored = self.records.get(release_id, {})
        retry_at = record.get("retry_at")
        if stored.get("resync"):  # a handler found the lease taken: the record stays due
            retry_at = stored["retry_at"] if retry_at is None else min(retry_at, stored["retry_at"])
        self.records[release_id] = {**copy.deepcopy(record), "lease_until": 0, "resync": False, "retry_at": retry_at}

    def due(self, now: float, limit: int = 20) -> list[str]:
        return [rid for rid, r in self.records.items() if r.get("retry_at") is not None and r["retry_at"] <= now][:limit]


class FakeGitHub:
    """GitHub's deployments and statuses in memory; ``down`` makes every call a 502."""

    def __init__(self) -> None:
        self.down = False
        self.deployments: list[dict[str, Any]] = []
        self.commit_statuses: list[dict[str, Any]] = []

    def _up(self) -> None:
        from shared.domain.errors import GitHubRetry

        if self.down:
            raise GitHubRetry("502", 0.0)

    def find_deployment(self, repo: str, sha: str, environment: str, release_id: str) -> int | None:
        self._up()
        return next((d["id"] for d in self.deployments if (d["sha"], d["environment"], d["payload"].get("release_id"))
                     == (sha, environment, release_id)), None)

    def create_deployment(self, repo: str, body: Mapping[str, Any]) -> int:
        self._up()
        self.deployments.append({"id": len(self.deployments) + 1, "sha": body["ref"], "environment": body["environment"],
                                 "payload": dict(body.get("payload") or {}), "statuses": []})
        return len(self.deployments)

    def create_deployment_status(self, repo: str, deployment_id: int, body: Mapping[str, Any]) -> None:
        self._up()
        self.deployments[deployment_id - 1]["statuses"].append(body["state"])

    def create_commit_status(self, repo: str, sha: str, body: Mapping[str, Any]) -> None:
        self._up()
        self.commit_statuses.append(dict(body))
