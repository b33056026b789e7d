"""ApprovalService over the in-memory store: links, the confirm page, decisions and refusals.

The helpers at the top (World, waiting_release) are
reused by the integration tests, which swap in the Firestore store and real channels.
"""
from __future__ import annotations

import dataclasses
import re
import threading
import urllib.parse
from dataclasses import dataclass, field, replace

import pytest

from shared.app.approvals import ApprovalRefused, ApprovalService, release_readers
from shared.ui.approval_http import ApprovalPages
from shared.domain.app_record import VersionFloor
from shared.domain.approval_record import ApprovalRecord
from shared.app.dead_letters import DeadLetters
from shared.testing.fakes import (
    FakeClock,
    FakeDeadLetters,
    FakeLinkSender,
    FakePublisher,
    FakeStore,
    InMemoryApprovalStore,
)
from shared.domain.approval_tokens import Keyring, LinkClaims, sign
from shared.domain.commands import RequestApproval, StartStage
from shared.app.config import Settings
from shared.domain.errors import ConfigError, PipelineError, TransientError
from shared.domain.events import LockGranted, ApprovalDecided, Outcome, ReleaseStarted, StageFinished
from shared.domain.wire import from_payload
from shared.domain.gate import GateOutcome, decide
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from tests.unit.gate_helpers import APPROVER, PIPELINE, PUSHER

T0 = 1_800_000_000.0
KEYS = "k2:second-secret-0123456789abcdef,k1:first-secret-0123456789abcdef"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"


def waiting_release(commit: str = "abcdef1234567890"):
    """Drive the real gate until the release waits for approval; returns (state, RequestApproval)."""
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit=commit,
                        version="1.2.3", pushed_by=PUSHER, now=T0)
    decision = decide(PIPELINE, state, ReleaseStarted("e-start", state.release_id), T0)
    n = 0
    while True:
        state = decision.state
        requests = [c for c in decision.commands if isinstance(c, RequestApproval)]
        if requests:
            assert state.status is ReleaseStatus.AWAITING_APPROVAL
            return state, requests[0]
        n += 1
        if state.status is ReleaseStatus.QUEUED:  # the environment lock is free: grant it
            decision = decide(PIPELINE, state, LockGranted(f"g{n}", state.release_id, state.waiting_for), T0 + n)
            continue
        (start,) = [c for c in decision.commands if isinstance(c, StartStage)]
        state.stages[start.stage].result["build_id"] = f"b{n}"  # the handle the dispatcher records after the start
        event = StageFinished(f"e{n}", state.release_id, start.stage, start.stage_run_id, Outcome.SUCCEEDED, "",
                              {"status": "SUCCESS", "build_id": f"b{n}"})
        decision = decide(PIPELINE, state, event, T0 + n)


@dataclass
class World:
    store: object = field(default_factory=InMemoryApprovalStore)
    settings: Settings = field(default_factory=lambda: Settings(approval_keys=KEYS, approval_base_url="http://127.0.0.1:8083"))
    sender: object = field(default_factory=FakeLinkSender)
    publisher: FakePublisher = field(default_factory=FakePublisher)
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    releases: FakeStore = field(default_factory=FakeStore)
    dead_letters: FakeDeadLetters = field(default_factory=FakeDeadLetters)

    def __post_init__(self):
        self.keyring = Keyring.from_setting(self.settings.approval_keys)
        self.service = ApprovalService.from_settings(
            self.settings, store=self.store, publisher=self.publisher, clock=self.clock,
            releases=self.releases, link_senders=[self.sender], dead_letters=self.dead_letters,
        )
        self._saving = threading.Lock()
        self.release, self.command = waiting_release()
        self.releases.save_pipeline(PIPELINE)
        self.releases.create(self.release)

    def send_links(self) -> dict[str, str]:
        """Request approval; returns approver -> token taken from the delivered text."""
        assert self.service.request(self.release, self.command) == {"links_sent": 1}
        return {approver: token_in(text) for approver, _, text in self.sender.sent}

    def token(self, **changes) -> str:
        """A genuinely signed token for a stored request; ``changes`` alter both (e.g. approver)."""
        record = ApprovalRecord(nonce=f"nonce-{len(changes)}-" + "x" * 20, release_id=self.release.release_id,
                                stage="approval", attempt=self.command.attempt, approver=APPROVER,
                                expires_at=self.command.expires_at, tag=self.release.tag, created_at=T0)
        record = replace(record, **changes)
        assert self.store.create(record)
        return sign(LinkClaims(record.release_id, record.stage, record.attempt, record.approver, record.nonce,
                               record.tag, record.expires_at), self.keyring)

    def save_release(self) -> None:
        """Store the release as the test left it (tests change ``self.release`` in place)."""
        with self._saving:
            stored, version = self.releases.get(self.release.release_id)
            if stored.to_dict() != self.release.to_dict():
                self.releases.update(self.release, version)

    @property
    def pages(self) -> ApprovalPages:
        """The on_approval function's HTTP side over this world's service (tests swap the service)."""
        return ApprovalPages(self.service)

    def get(self, token, method="GET"):
        self.save_release()
        return self.pages.handle(method, {"token": token}, {}, {"User-Agent": "MailScanner/1.0"})

    def post(self, token, decision="approve", reason="", via_query=False):
        query = {"token": token} if via_query else {}
        form = {"decision": decision, "reason": reason} | ({} if via_query else {"token": token})
        self.save_release()
        return self.pages.handle("POST", query, form, {"user-agent": BROWSER})

    def nonce(self, token) -> str:
        import base64
        import json

        body = token.split(".")[2]
        return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["nonce"]


def token_in(text: str) -> str:
    (link,) = re.findall(r"http://127\.0\.0\.1:8083/\?token=(\S+)", text)
    return urllib.parse.unquote(link)


@pytest.fixture
def world():
    return World()


# -- sending links ---------------------------------------------------------------
def test_request_sends_one_personal_link_per_approver_and_reuses_it(world):
    assert world.command.approvers == (APPROVER,)  # the gate left out the pusher
    tokens = world.send_links()
    (approver, subject, text) = world.sender.sent[0]
    assert approver == APPROVER and world.release.release_id in subject
    assert "changes nothing" in text and world.release.tag in text
    record = world.store.get(world.nonce(tokens[APPROVER]))
    assert (record.release_id, record.stage, record.attempt, record.approver, record.tag) == (
        world.release.release_id, "approval", 1, APPROVER, world.release.tag)
    assert record.expires_at == world.command.expires_at and not record.consumed
    # A redelivered command sends the same link again instead of minting another.
    world.service.request(world.release, world.command)
    assert token_in(world.sender.sent[1][2]) == tokens[APPROVER]


def test_request_without_any_delivered_link_is_transient():
    world = World(sender=FakeLinkSender(fail_for=(APPROVER,)))
    with pytest.raises(TransientError):
        world.service.request(world.release, world.command)


def test_request_needs_a_personal_channel(world):
    service = ApprovalService.from_settings(world.settings, store=world.store, publisher=world.publisher,
                                            clock=world.clock, link_senders=[])
    with pytest.raises(ConfigError, match="RELEASE_SMTP_HOST"):
        service.request(world.release, world.command)


# -- GET / HEAD: the confirm page, nothing changes ---------------------------------------
def test_get_shows_the_confirm_page_and_changes_nothing(world):
    token = world.send_links()[APPROVER]
    before = world.store.get(world.nonce(token))
    snapshot = world.release.to_dict()
    status, html, headers = world.get(token)
    assert status == 200
    for text in (world.release.release_id, world.release.tag, world.release.commit, "staging-smoke", "succeeded",
                 "Chaos smoke: not run", 'value="approve"', 'value="reject"', 'name="reason"'):
        assert text in html
    # Approve is the one primary button; Reject needs a reason before it can be sent.
    assert html.count('class="primary"') == 1 and 'value="approve" class="primary"' in html
    assert re.search(r'<textarea id="reject-reason" name="reason"[^>]* required', html)
    assert '<form method="post"' in html and "<script" not in html.lower() and "onload" not in html.lower()
    assert headers["Referrer-Policy"] == "no-referrer" and headers["Cache-Control"] == "no-store"
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none' forbids scripts
    status, html, _ = world.get(token, method="HEAD")
    assert (status, html) == (200, "")
    assert world.store.get(world.nonce(token)) == before
    assert world.release.to_dict() == snapshot
    assert world.publisher.messages == []


def test_confirm_page_shows_the_chaos_verdict(world):
    world.release.stages["chaos"].status = StageStatus.SUCCEEDED
    world.release.stages["chaos"].result = {"status": "SUCCESS", "passed": True, "error_rate": 0.012,
                                            "p95_ms": 512.7, "sources": [{"kind": "k6"}]}
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert "Chaos smoke passed: error rate 1.20%, P95 513 ms." in html and "{" not in html.split("<body>")[1]


def test_confirm_page_shows_evidence_in_words_and_the_pushed_commits(world):
    world.release.stages["staging-smoke"].result = {"checks": [
        {"path": "/", "status": 200, "attempts": 1, "latency_ms": 12.4},
        {"path": "/health/liveliness", "status": 200, "attempts": 2, "latency_ms": 8.0}]}
    world.release.changes = {"commits": [{"id": "0123456789abcdef", "message": "Fix the <b>login</b>", "author": "Dev"}],
                             "total": 3, "compare_url": "https://github.com/acme/app/compare/0000111...abcdef1",
                             "before": "0000111222"}
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert "2/2 paths answered 2xx (/ 200 in 12 ms, /health/liveliness 200 in 8 ms)" in html
    assert "attempts" not in html and "latency_ms" not in html  # no raw result dumps
    assert "<code>0123456</code> Fix the &lt;b&gt;login&lt;/b&gt;" in html and "2 earlier commits not listed" in html
    assert 'href="https://github.com/acme/app/compare/0000111...abcdef1"' in html
    # issue 26: a one-line summary and the decision first, the details and the folded evidence after
    assert html.index("data-summary") < html.index("Your decision") < html.index("Image digest") < html.index("Staging evidence")


def test_confirm_page_links_each_build_and_job_log_and_drops_other_schemes(world):
    ran = [sid for sid, st in world.release.stages.items() if st.attempt and sid != "approval"]
    build, job, bad = ran[0], ran[1], ran[2]
    world.release.stages[build].result["log_url"] = "http://127.0.0.1:4711/logs/builds/b-1"
    world.release.stages[job].result["log_uri"] = "https://console.cloud.google.com/run/jobs/executions/details/x"
    world.release.stages[bad].result["log_url"] = "javascript:alert(1)"
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert 'href="http://127.0.0.1:4711/logs/builds/b-1"' in html
    assert 'href="https://console.cloud.google.com/run/jobs/executions/details/x"' in html
    assert "javascript:" not in html and html.count("data-log") == 2


def test_reject_without_a_reason_is_refused_and_the_link_stays_usable(world):
    token = world.send_links()[APPROVER]
    status, html, _ = world.post(token, "reject", reason="  ")
    assert status == 400 and "needs a reason" in html
    assert not world.store.get(world.nonce(token)).consumed and world.publisher.messages == []
    status, _, _ = world.post(token, "reject", reason="the migration is not reversible")
    assert status == 200 and world.publisher.messages[0][1]["reason"] == "the migration is not reversible"


def test_page_escapes_values(world):
    world.release.commit = "<script>alert(1)</script>"
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert "<script>" not in html and "&lt;script&gt;" in html


# -- POST: the decision --------------------------------------------------------------------
@pytest.mark.parametrize("choice, approve", [("approve", True), ("reject", False)])
def test_post_consumes_the_nonce_and_publishes_the_decision(world, choice, approve):
    token = world.send_links()[APPROVER]
    world.clock.t = T0 + 600
    status, html, _ = world.post(token, choice, reason="  looks good  ")
    assert status == 200 and ("approved" if approve else "rejected") in html
    ((topic, data, attributes),) = world.publisher.messages
    nonce = world.nonce(token)
    assert topic == "pipeline-events" and attributes["type"] == "approval.decided"
    assert data == {"type": "approval.decided", "release_id": world.release.release_id, "stage": "approval",
                    "attempt": 1, "nonce": nonce, "approver": APPROVER, "approve": approve,
                    "expires_at": world.command.expires_at, "reason": "looks good", "user_agent": BROWSER}
    record = world.store.get(nonce)
    assert (record.consumed_at, record.decision, record.reason, record.user_agent, record.message_id) == (
        T0 + 600, "approved" if approve else "rejected", "looks good", BROWSER, "msg-1")
    # The published event is one the gate accepts.
    event = from_payload("m1", data)
    assert isinstance(event, ApprovalDecided)
    decision = decide(PIPELINE, world.release, event, T0 + 600)
    assert decision.outcome is GateOutcome.APPLIED
    assert decision.state.stages["approval"].status is (StageStatus.SUCCEEDED if approve else StageStatus.FAILED)
    # The dispatcher confirms it against the recorded decision; a changed copy is not confirmed.
    assert world.service.unconfirmed(event) == ""
    flipped = replace(event, approve=not approve)
    assert world.service.unconfirmed(flipped) == "the event does not match the decision recorded through its link"
    assert "was issued" in world.service.unconfirmed(replace(event, nonce="invented"))


def test_an_issued_but_unused_link_confirms_nothing(world):
    token = world.send_links()[APPROVER]
    record = world.store.get(world.nonce(token))
    event = ApprovalDecided("m2", record.release_id, record.stage, record.attempt, record.nonce, record.approver,
                            True, record.expires_at)
    assert world.service.unconfirmed(event) == "the event does not match the decision recorded through its link"


def test_token_may_also_come_from_the_query_on_post(world):
    token = world.send_links()[APPROVER]
    assert world.post(token, via_query=True).status == 200


def test_ten_concurrent_posts_publish_exactly_once(world):
    token = world.send_links()[APPROVER]
    barrier = threading.Barrier(10)
    statuses = []

    def click():
        barrier.wait()
        statuses.append(world.post(token).status)

    threads = [threading.Thread(target=click) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * 9
    assert len(world.publisher.messages) == 1


def test_publish_failure_keeps_the_decision_for_redelivery(world):
    token = world.send_links()[APPROVER]
    world.publisher.fail = True
    status, html, _ = world.post(token)
    assert status == 503 and "saved" in html
    assert world.store.get(world.nonce(token)).decision == "approved"
    assert world.post(token).status == 409  # the link stays used
    world.publisher.fail = False
    (letter,) = world.dead_letters.list()  # the one dead-letter store keeps the decision's event
    assert letter.id == f"approval-{world.nonce(token)}" and "publish failed" in letter.reason
    letters = DeadLetters(world.dead_letters, world.publisher, world.clock, world.settings)
    assert letters.redrive(letter.id) == "msg-1"
    with pytest.raises(PipelineError, match="re-driven already"):
        letters.redrive(letter.id)
    ((_, data, _),) = world.publisher.messages
    event = from_payload("m-redriven", data)
    assert event.approve is True and event.nonce == world.nonce(token)
    assert world.service.unconfirmed(event) == "", "the re-driven event matches the recorded decision"


# -- refusals: status, message, nothing consumed, nothing published ----------------------------
def _tamper(token: str) -> str:
    version, kid, body, signature = token.split(".")
    return ".".join([version, kid, body, ("A" if signature[0] != "A" else "B") + signature[1:]])


REFUSALS = {
    # name: (how to make the token / world, expected status, words in the page)
    "malformed": (lambda w: "not-a-token", 400, "not in the expected format"),
    "empty": (lambda w: "", 400, "no readable token"),
    "tampered": (lambda w: _tamper(w.send_links()[APPROVER]), 403, "signature does not match"),
    "unknown key": (lambda w: "v1.k9" + w.send_links()[APPROVER][5:], 403, "not configured"),
    "expired": (lambda w: (w.send_links()[APPROVER], setattr(w.clock, "t", w.command.expires_at + 1))[0], 410, "expired"),
    "no such request": (lambda w: sign(LinkClaims(w.release.release_id, "approval", 1, APPROVER, "z" * 24,
                                                  w.release.tag, w.command.expires_at), w.keyring), 404, "does not exist"),
    "release not found": (lambda w: w.token(release_id="acme-app-ffffffffffff"), 404, "release acme-app-ffffffffffff does not exist"),
    "other attempt": (lambda w: w.token(attempt=2), 409, "no longer waits"),
    "other tag": (lambda w: w.token(tag="v0.0.1-0000000"), 409, "no longer waits"),
    "other stage": (lambda w: w.token(stage="prod-deploy"), 409, "no longer waits"),
    "not an approver": (lambda w: w.token(approver="mallory@example.com"), 403, "mallory@example.com is not an approver"),
    "pusher": (lambda w: w.token(approver=PUSHER), 403, "pushed this commit and cannot approve it"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_refusals(world, name, method):
    make, status, words = REFUSALS[name]
    token = make(world)
    answer = world.get(token) if method == "GET" else world.post(token)
    assert answer.status == status, answer.html
    assert words in answer.html and "Nothing was changed" in answer.html
    assert "<form" not in answer.html
    assert world.publisher.messages == []
    records = getattr(world.store, "_records", {})
    assert not any(r.consumed for r in records.values())


def test_stage_no_longer_waiting_is_409(world):
    token = world.send_links()[APPROVER]
    world.release.stages["approval"].status = StageStatus.FAILED
    world.release.status = ReleaseStatus.STOPPED
    answer = world.post(token)
    assert answer.status == 409 and "is stopped and no longer waits" in answer.html
    assert world.publisher.messages == [] and not world.store.get(world.nonce(token)).consumed


def test_already_used_is_409_and_names_the_decision(world):
    token = world.send_links()[APPROVER]
    assert world.post(token, "reject", "not yet").status == 200
    for answer in (world.get(token), world.post(token, "approve")):
        assert answer.status == 409 and "already used: rejected" in answer.html
    assert len(world.publisher.messages) == 1
    assert world.store.get(world.nonce(token)).decision == "rejected"


def test_unknown_decision_is_400_and_consumes_nothing(world):
    token = world.send_links()[APPROVER]
    answer = world.post(token, decision="maybe")
    assert answer.status == 400 and "choose Approve or Reject" in answer.html
    assert not world.store.get(world.nonce(token)).consumed and world.publisher.messages == []


def test_stage_deadline_passed_is_410(world):
    token = world.send_links()[APPROVER]
    world.release.stages["approval"].deadline = T0 - 1
    assert world.post(token).status == 410 and world.publisher.messages == []


def test_other_methods_are_405(world):
    answer = world.pages.handle("PUT", {}, {}, {})
    assert answer.status == 405 and answer.headers["Allow"] == "GET, HEAD, POST"


def test_release_readers_pick_the_approval_stage(world):
    get_release, get_stage, get_pipeline = release_readers(world.releases)
    assert get_release(world.release.release_id).to_dict() == world.release.to_dict() and get_release("nope") is None
    assert get_stage(world.release).id == "approval" and get_pipeline(world.release).digest == PIPELINE.digest


def test_link_binds_the_digest_and_the_page_shows_it(world):
    world.command = replace(world.command, digest="sha256:" + "c" * 64)
    token = world.send_links()[APPROVER]
    assert world.store.get(world.nonce(token)).digest == "sha256:" + "c" * 64
    status, html, _ = world.get(token)
    assert status == 200 and "sha256:" + "c" * 64 in html


# -- relctl approve / reject: the same rules without a link ---------------------------------
def test_an_approver_decides_by_identity_under_the_links_rules(world):
    token = world.send_links()[APPROVER]
    rid = world.release.release_id
    answer = world.service.decide_as(APPROVER, rid, True, "staging looks fine", via="relctl (operator request r1)")
    assert answer == {"release_id": rid, "stage": "approval", "attempt": world.command.attempt,
                      "decision": "approved", "approver": APPROVER}
    record = world.store.get(world.nonce(token))
    assert record.consumed and record.decision == "approved" and record.user_agent.startswith("relctl")
    ((_, data, _),) = world.publisher.messages
    assert data["approve"] is True and data["nonce"] == record.nonce and world.service.unconfirmed(
        from_payload("e1", data)) == ""
    with pytest.raises(ApprovalRefused) as again:  # single use: the request is consumed
        world.service.decide_as(APPROVER, rid, False, "changed my mind", via="relctl")
    assert again.value.status == 409
    status, _, _ = world.post(token, "reject", reason="x")  # and the link is spent as well
    assert status == 409


@pytest.mark.parametrize("who, approve, reason, status, words", [
    ("intruder@example.com", True, "", 403, "is not an approver"),
    (APPROVER, False, "", 400, "needs a reason"),
])
def test_decide_as_refusals(world, who, approve, reason, status, words):
    world.send_links()
    with pytest.raises(ApprovalRefused) as err:
        world.service.decide_as(who, world.release.release_id, approve, reason, via="relctl")
    assert err.value.status == status and words in str(err.value)
    assert world.publisher.messages == []


def test_decide_as_refuses_the_pusher_and_an_expired_request(world):
    world.send_links()
    assert PUSHER in PIPELINE.stage("approval").params["approvers"]  # on the list, yet not for their own push
    with pytest.raises(ApprovalRefused, match="pushed this commit") as err:
        world.service.decide_as(PUSHER, world.release.release_id, True, "", via="relctl")
    assert err.value.status == 403
    world.clock.t = world.command.expires_at + 1
    with pytest.raises(ApprovalRefused) as err:
        world.service.decide_as(APPROVER, world.release.release_id, True, "", via="relctl")
    assert err.value.status == 410 and world.publisher.messages == []


def test_confirm_page_says_what_prod_runs_now(world):
    from shared.app.stage_medians import prod_runs_text
    from shared.testing.fakes import InMemoryAppRecords

    records = InMemoryAppRecords()
    assert prod_runs_text(records, "app") == "nothing released to prod yet"
    data, token = records.read("app")
    records.write("app", replace(data, version_floor=VersionFloor("1.2.2", "acme-app-0123456789ab")), token)
    world.service.prod_runs = lambda release: prod_runs_text(records, "app")
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert "<dt>Production runs</dt><dd>version 1.2.2 (release acme-app-0123456789ab)</dd>" in html


def test_confirm_page_links_the_release_on_the_dashboard_when_a_public_url_is_set(world):
    """Issue 26: the approval page had no link to the dashboard."""
    _, html, _ = world.get(world.send_links()[APPROVER])
    assert "data-dashboard" not in html  # no public URL configured: no link that leads nowhere
    world.service.settings = dataclasses.replace(world.service.settings, public_base_url="https://dash.example.com/")
    _, html, _ = world.get(world.send_links()[APPROVER])
    summary = html[html.index("data-summary"):html.index("</p>", html.index("data-summary"))]
    assert f'href="https://dash.example.com/release/{world.release.release_id}" data-dashboard' in summary
