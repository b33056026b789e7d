"""One contract per port, run against the fake (shared/testing/fakes.py) and the Firestore
adapter on the emulator, so a fake cannot drift from what the real store does."""
from __future__ import annotations

import importlib
import threading
from dataclasses import replace

import pytest

from shared.app.config import Settings
from shared.domain.approval_record import ApprovalNotFound, ApprovalRecord
from shared.domain.dead_letters import MAX_KEPT_BYTES, DeadLetter
from shared.domain.errors import DefinitionError, StaleWrite
from shared.domain.state import ReleaseStatus, new_release
from shared.testing import fakes
from tests.unit.gate_helpers import PIPELINE, PUSHER, T0

IMPLEMENTATIONS = ["fake", pytest.param("firestore", marks=pytest.mark.emulators)]


@pytest.fixture(params=IMPLEMENTATIONS)
def kind(request):
    if request.param == "firestore":
        request.getfixturevalue("emulators")
    return request.param


@pytest.fixture
def client_and_settings(kind, unique_prefix):
    if kind == "fake":
        return None, None
    from google.cloud import firestore

    from tests.conftest import PROJECT

    return firestore.Client(project=PROJECT), Settings(project=PROJECT, collection_prefix=unique_prefix)


# port -> (its fake, its Firestore adapter as module:class)
PORTS = {
    "releases": (fakes.FakeStore, "firestore_store:FirestoreStore"),
    "letters": (fakes.FakeDeadLetters, "firestore_dead_letters:FirestoreDeadLetters"),
    "approvals": (fakes.InMemoryApprovalStore, "firestore_approvals:FirestoreApprovalStore"),
    "apps": (fakes.InMemoryAppRecords, "firestore_apps:FirestoreAppRecords"),
    "requests": (fakes.FakeOperatorRequests, "firestore_operator_requests:FirestoreOperatorRequests"),
    "histories": (fakes.FakeRevisionHistories, "firestore_revision_history:FirestoreRevisionHistories"),
    "github_reports": (fakes.FakeGitHubLedger, "firestore_github_reports:FirestoreGitHubReports"),
}


def implementation(port: str, kind: str, client_and_settings):
    fake, adapter = PORTS[port]
    if kind == "fake":
        return fake()
    module, name = adapter.split(":")
    return getattr(importlib.import_module(f"shared.adapters.{module}"), name)(*client_and_settings)


def port_fixture(port: str):
    @pytest.fixture(name=port)
    def made(kind, client_and_settings):
        return implementation(port, kind, client_and_settings)
    return made


for _port in PORTS:  # fixtures ``releases``, ``letters``, ``approvals``, ``apps``, ``requests``, ``histories``
    globals()[f"{_port}_fixture"] = port_fixture(_port)


def release(commit: str, now: float = T0):
    return new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit=commit, version="1.2.3",
                       pushed_by=PUSHER, now=now)


# -- ReleaseStore -------------------------------------------------------------------------

def test_release_create_is_create_only_and_get_returns_what_was_written(releases):
    state = release("a" * 40)
    assert releases.create(state) and not releases.create(state)
    got, token = releases.get(state.release_id)
    assert got.to_dict() == state.to_dict() and token is not None
    assert releases.get("nope") is None


def test_release_update_is_conditional_on_the_token_it_read(releases):
    state = release("b" * 40)
    releases.create(state)
    _, token = releases.get(state.release_id)
    assert releases.update(state, token) == token, "a write that changes nothing keeps the update time"
    state.status = ReleaseStatus.AWAITING_APPROVAL
    new_token = releases.update(state, token)
    with pytest.raises(StaleWrite):
        releases.update(state, token)
    releases.update_fields(state.release_id, {("stages", "lint", "result"): {"k": 1}}, new_token)
    got, _ = releases.get(state.release_id)
    assert got.status is ReleaseStatus.AWAITING_APPROVAL and got.stages["lint"].result == {"k": 1}
    with pytest.raises(StaleWrite):
        releases.update_fields(state.release_id, {("outbox",): []}, new_token)


def test_release_lists_newest_first_and_due_ones(releases):
    old, new = release("c" * 40, T0), release("d" * 40, T0 + 5)
    old.status, new.status = ReleaseStatus.SUCCEEDED, ReleaseStatus.RUNNING
    old.wake_at, new.wake_at = None, T0 + 95  # as the gate sets them (shared/domain/wake.py)
    for state in (old, new):
        releases.create(state)
    assert [s.release_id for s in releases.list_releases(limit=2)] == [new.release_id, old.release_id]
    assert releases.list_due(T0 + 94, 10) == ([], None)
    due, cursor = releases.list_due(T0 + 95, 10)
    assert [s.release_id for s, _ in due] == [new.release_id] and cursor is None


def test_pipelines_are_pinned_by_digest(releases):
    releases.save_pipeline(PIPELINE)
    assert releases.load_pipeline(PIPELINE.digest).digest == PIPELINE.digest
    with pytest.raises(DefinitionError):
        releases.load_pipeline("0" * 64)


def test_a_webhook_delivery_is_claimed_once(releases):
    assert releases.claim_delivery("d-1", {"release_id": "r"}) and not releases.claim_delivery("d-1", {})


# -- DeadLetterStore ----------------------------------------------------------------------

def test_dead_letters_are_kept_once_newest_first_and_marked_when_re_driven(letters):
    big = b"x" * (MAX_KEPT_BYTES + 10)
    assert letters.record(DeadLetter("l1", "why", "dispatch", T0, b"\x00\xff", {"type": "t"}))
    assert not letters.record(DeadLetter("l1", "again", "dispatch", T0 + 9))
    assert letters.record(DeadLetter("l/2", "big", "dispatch", T0 + 1, big))
    first, second = letters.list()
    assert (first.id, second.id) == ("l/2", "l1")
    assert second.data == b"\x00\xff" and second.attributes == {"type": "t"} and second.reason == "why"
    assert first.truncated and len(first.data) == MAX_KEPT_BYTES
    letters.mark_redriven("l1", "m-7", T0 + 3)
    assert (letters.get("l1").redriven_as, letters.get("l1").redriven_at) == ("m-7", T0 + 3)
    assert letters.get("nope") is None and len(letters.list(limit=1)) == 1


# -- ApprovalStore ------------------------------------------------------------------------

def approval(nonce="n" * 24, approver="boss@example.com"):
    return ApprovalRecord(nonce=nonce, release_id="r", stage="approval", attempt=1, approver=approver,
                          expires_at=T0 + 3600, tag="v1.2.3-aaaaaaa", created_at=T0)


def test_an_approval_request_is_consumed_exactly_once(approvals):
    assert approvals.create(approval()) and not approvals.create(approval())
    assert approvals.find_open("r", "approval", 1, "boss@example.com").nonce == "n" * 24
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        approvals.consume("n" * 24, "approved", "ok", "UA", T0 + 1))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 4 + [True]
    record = approvals.get("n" * 24)
    assert (record.decision, record.consumed_at, record.reason) == ("approved", T0 + 1, "ok")
    assert approvals.find_open("r", "approval", 1, "boss@example.com") is None
    approvals.mark_published("n" * 24, "m-1")
    assert approvals.get("n" * 24).message_id == "m-1"
    with pytest.raises(ApprovalNotFound):
        approvals.consume("missing-nonce", "approved", "", "", T0)
    with pytest.raises(ValueError):
        approvals.consume("n" * 24, "maybe", "", "", T0)


# -- AppRecords ---------------------------------------------------------------------------

def test_an_app_record_starts_empty_and_is_written_on_condition(apps):
    from shared.domain.app_record import AppRecord, EnvironmentLock, Freeze, QueuedRelease, Supersession, VersionFloor

    data, token = apps.read("acme-app")
    assert token is None and data == AppRecord()
    data = data.with_lock("staging", EnvironmentLock("r-1", ("web",), (QueuedRelease("r-2", T0, "1.0.1", ("web",)),),
                                                     {"r-0": Supersession("r-1", "")}))
    apps.write("acme-app", data, None)
    with pytest.raises(StaleWrite):
        apps.write("acme-app", data, None)  # exists now
    again, token = apps.read("acme-app")
    assert again == data and token is not None, "every field reads back as written"
    frozen = replace(again, version_floor=VersionFloor("1.2.3", "r-1"), freeze=Freeze("ops@example.com", T0, "close"))
    apps.write("acme-app", frozen, token)
    with pytest.raises(StaleWrite):
        apps.write("acme-app", again, token)
    assert apps.read("acme-app")[0] == frozen


# -- OperatorRequestLog -------------------------------------------------------------------

def test_an_operator_request_is_recorded_once(requests):
    asked = {"action": "replay", "release_id": "r", "stage": "lint", "requested_by": "ops@example.com"}
    assert requests.record("req-1", asked) and not requests.record("req-1", {**asked, "stage": "unit"})
    assert {k: requests.get("req-1")[k] for k in asked} == asked
    assert requests.get("req-2") is None


# -- RevisionHistories -------------------------------------------------------------------

def test_a_revision_history_reads_back_what_was_written_with_verdicts_and_splits(histories):
    from shared.domain.revision_history import RevisionRecord, ServiceHistory, TrafficMove, Verdict, split_of

    assert histories.read("web") == ServiceHistory("web")
    move = TrafficMove("deploy-1", T0, "deploy", split_of([("web-a", 100)]), split_of([("web-b", 10), ("web-a", 90)]),
                       by="the gate", release_id="r1", operation="op-1")
    written = histories.change("web", lambda h: h.with_revision(RevisionRecord("web-b", "r1", "1.2.3", "abc1234",
                                                                                "img@sha256:1"))
                               .with_verdict("web-b", Verdict.FAILED, "smoke failed").with_move(move))
    got = histories.read("web")
    assert got == written and got.revision("web-b").verdict is Verdict.FAILED
    assert got.serving() == (("web-a", 90), ("web-b", 10)) and got.moves[0].operation == "op-1"
    assert histories.read("other") == ServiceHistory("other")


def test_concurrent_changes_of_one_history_are_all_kept(histories):
    from shared.domain.revision_history import TrafficMove

    def add(worker: int) -> None:
        for i in range(4):
            histories.change("web", lambda h, i=i: h.with_move(
                TrafficMove(f"w{worker}-{i}", T0 + i, "manual", (), (("web-a", 100),))))

    threads = [threading.Thread(target=add, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m.move_id for m in histories.read("web").moves) == sorted(f"w{w}-{i}" for w in range(3)
                                                                          for i in range(4))


# -- Locks (shared/app/locks.py over the in-memory fake's records, or Firestore's) ------------

@pytest.fixture
def locks(kind, client_and_settings):
    publisher = fakes.FakePublisher()
    if kind == "fake":
        made = fakes.FakeLocks(publisher)
    else:
        from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
        from shared.app.locks import EnvironmentLocks

        client, settings = client_and_settings
        made = EnvironmentLocks(FirestoreAppRecords(client, settings), publisher, settings,
                                service_lock_records(client, settings))
    return made


def test_a_lock_is_held_by_one_release_and_handed_to_the_newest_queued(locks):
    from shared.domain.events import LockGranted, Superseded

    assert locks.acquire("acme-app", "staging", "r-1", T0, "1.0.0", ("web",)) == "granted"
    assert locks.acquire("acme-app", "staging", "r-2", T0 + 1, "1.0.1", ("web",)) == "queued"
    assert locks.acquire("acme-app", "staging", "r-3", T0 + 2, "1.0.2", ("web",)) == "queued"
    assert locks.acquire("other-app", "staging", "o-1", T0, "9.0.0") == "granted", "apps never wait for each other"
    assert locks.confirms("acme-app", LockGranted("", "r-1", "staging")) == ""
    assert "held by r-1" in locks.confirms("acme-app", LockGranted("", "r-3", "staging"))
    assert locks.release("acme-app", "staging", "r-1") == "r-3"
    assert locks.confirms("acme-app", LockGranted("", "r-3", "staging")) == ""
    assert locks.confirms("acme-app", Superseded("", "r-2", "staging", "r-3")) == ""
    assert "no supersession" in locks.confirms("acme-app", Superseded("", "r-2", "staging", "r-9"))


def test_prod_is_granted_only_above_the_version_floor(locks):
    assert locks.acquire("acme-app", "prod", "r-2", T0, "2.0.0") == "granted"
    locks.release("acme-app", "prod", "r-2")
    assert locks.acquire("acme-app", "prod", "r-1", T0 + 1, "1.9.0") == "superseded"


def test_stage_durations_are_counted_once_per_release(locks):
    from shared.app.stage_medians import app_record

    locks.record_durations("acme-app", "r-1", {"lint": 10.0})
    locks.record_durations("acme-app", "r-1", {"lint": 10.0})  # a repeated batch
    locks.record_durations("acme-app", "r-2", {"lint": 20.0})
    medians = app_record(locks.records, "acme-app").stage_medians
    assert medians["lint"]["recent"] == [10.0, 20.0] and medians["lint"]["median_s"] == 15.0


github_reports = port_fixture("github_reports")


def test_github_reports_are_leased_and_a_blocked_handler_leaves_the_record_due(github_reports):
    assert github_reports.get("r1") is None
    first = github_reports.claim("r1", T0, 30)
    assert first is not None and first["sent"] == [] and first["retry_at"] is None
    assert github_reports.claim("r1", T0 + 1, 30) is None  # the other handler backs off …
    first["sent"].append("commit/pending/started")
    first["deployments"]["staging"] = 1001
    github_reports.save("r1", first)
    assert github_reports.due(T0 + 2) == ["r1"]  # … and the holder's save kept the record due
    again = github_reports.claim("r1", T0 + 2, 30)
    assert again["sent"] == ["commit/pending/started"] and again["deployments"] == {"staging": 1001}
    github_reports.save("r1", {**again, "retry_at": None, "failures": 0})
    assert github_reports.due(T0 + 3600) == [] and github_reports.get("r1")["sent"] == ["commit/pending/started"]
    github_reports.save("r2", {**again, "retry_at": T0 + 60, "failures": 1, "last_error": "502"})
    assert github_reports.due(T0 + 59) == [] and github_reports.due(T0 + 60) == ["r2"]
    assert github_reports.claim("r2", T0 + 61, 30)["last_error"] == "502"


def test_github_reports_under_contention_one_handler_at_a_time_and_no_save_is_lost(github_reports):
    """Handlers of one release sync at once (each written transition syncs): of each round of
    claims exactly one gets the record, the others only mark it due, and every holder's save lands."""
    rounds, handlers = 6, 8
    for n in range(rounds):
        now = T0 + 100 * n
        got: list = []
        errors: list = []

        def claim():
            try:
                record = github_reports.claim("busy", now, 30)
                if record is not None:
                    got.append(record)
            except Exception as exc:  # noqa: BLE001 - what a handler would log as "reporting failed"
                errors.append(repr(exc))

        threads = [threading.Thread(target=claim) for _ in range(handlers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(got) == 1, (errors, len(got))
        (record,) = got
        assert record["sent"] == [f"key/{i}" for i in range(n)]
        github_reports.save("busy", {**record, "sent": [*record["sent"], f"key/{n}"], "retry_at": None})
        assert github_reports.due(now + 1) == ["busy"], "the handlers that backed off left it due"
