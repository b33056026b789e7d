"""Dashboard pages and JSON from release states built in the test, through handle() over the fake store."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from shared.ui.dashboard import handle, wsgi_app
from shared.ui.notes import safe_url
from shared.testing.fakes import FakeStore
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from tests.unit.test_notes import PIPELINE, T0, succeeded_release


class StageElements(HTMLParser):
    """Collects every element with data-stage, and scripts, from a page."""

    def __init__(self):
        super().__init__()
        self.stages: dict[str, list[dict]] = {}
        self.scripts: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-stage" in attrs:
            self.stages.setdefault(attrs["data-stage"], []).append({"tag": tag, **attrs})
        if tag == "script":
            self.scripts.append(attrs)
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def parse(body: str) -> StageElements:
    parser = StageElements()
    parser.feed(body)
    return parser


@pytest.fixture
def store():
    store = FakeStore()
    store.save_pipeline(PIPELINE)
    return store


def put(store, state):
    assert store.create(state)
    return state


def running_release(commit="1111111111111111", created=T0 + 10):
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit=commit, version="2.0.0",
                        pushed_by="dev@example.com", now=created)
    st = state.stages["unit"]
    st.status, st.attempt, st.started_at = StageStatus.RUNNING, 1, created
    return state


def test_release_page_has_one_box_per_stage_with_its_status(store):
    state = put(store, succeeded_release())
    status, body, headers = handle("GET", f"/release/{state.release_id}", {}, store)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    boxes = {sid: [e for e in els if e["tag"] == "div"] for sid, els in parse(body).stages.items()}
    assert list(boxes) == [s.id for s in PIPELINE.stages]
    assert {sid: els[0]["data-status"] for sid, els in boxes.items()} == {
        sid: st.status.value for sid, st in state.stages.items()}


def test_release_page_shows_durations_attempts_approval_traffic_and_log_links(store):
    state = put(store, succeeded_release())
    body = handle("GET", f"/release/{state.release_id}", {}, store)[1]
    assert "attempt 1 · 42.5s" in body
    assert "approved by boss@example.com at 2027-01-15T09:00:00Z" in body
    assert "10 % traffic since 2027-01-15T09:02:00Z" in body
    assert "100 % traffic since 2027-01-15T09:06:45Z" in body
    assert "10 % at 2027-01-15T09:02:00Z (prod-deploy); 100 % at 2027-01-15T09:06:45Z (traffic-100)" in body
    assert "120 tests, 0 failures, 0 errors, 3 skipped" in body
    assert "https://console.cloud.google.com/cloud-build/builds/b-unit" in parse(body).links


def test_optional_stage_is_drawn_as_a_side_branch_of_the_stage_before_it(store):
    state = put(store, succeeded_release())
    body = handle("GET", f"/release/{state.release_id}", {}, store)[1]
    smoke = body.index('data-stage="staging-smoke"')
    branch = body.index('class="branch"')
    chaos = body.index('data-stage="chaos"')
    approval = body.index('data-stage="approval"')
    assert smoke < branch < chaos < approval
    assert body.count('<div class="arrow">') == len([s for s in PIPELINE.stages if not s.optional]) - 1


def test_running_release_refreshes_itself_and_a_finished_one_does_not(store):
    running = put(store, running_release())
    status, body, headers = handle("GET", f"/release/{running.release_id}", {}, store)
    assert 'data-terminal="false"' in body
    scripts = parse(body).scripts
    assert len(scripts) == 1
    assert f"'nonce-{scripts[0]['nonce']}'" in headers["Content-Security-Policy"]
    assert "../api/release/" in body
    done = put(store, succeeded_release())
    assert 'data-terminal="true"' in handle("GET", f"/release/{done.release_id}", {}, store)[1]


def test_every_stored_string_is_escaped(store):
    state = succeeded_release()
    state.repo = '<script>alert("repo")</script>'
    state.stages["e2e"].status = StageStatus.FAILED
    state.stages["e2e"].reason = '<img src=x onerror=alert(1)> & "quotes"'
    state.stages["unit"].result["log_url"] = "javascript:alert(1)"
    state.status, state.reason = ReleaseStatus.STOPPED, "<b>bold</b>"
    put(store, state)
    body = handle("GET", f"/release/{state.release_id}", {}, store)[1]
    assert "<script>alert" not in body and "<img src=x" not in body and "<b>bold</b>" not in body
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quotes&#34;" in body  # the stage box (the notes on the page leave stages to it)
    assert "javascript:" not in body
    listing = handle("GET", "/", {}, store)[1]
    assert "&lt;script&gt;alert(&#34;repo&#34;)&lt;/script&gt;" in listing and "<script>" not in listing


def test_release_list_is_newest_first_with_status_and_relative_links(store):
    old = put(store, succeeded_release())
    new = put(store, running_release(created=T0 + 99999))
    status, body, _ = handle("GET", "/", {}, store)
    assert status == 200
    rows = re.findall(r'data-release-row="([^"]+)"', body)
    assert rows == [new.release_id, old.release_id]
    assert f'href="release/{new.release_id}"' in body
    assert 'class="badge" data-status="running"' in body and 'class="badge" data-status="succeeded"' in body
    assert 'http-equiv="refresh"' not in body, "the list is not refreshed as a whole (50 reads each time)"


@pytest.mark.parametrize("status, after", [("running", 2), ("awaiting_approval", 15), ("queued", 15),
                                           ("stopped", 60), ("succeeded", None)])
def test_the_state_endpoint_is_one_read_and_says_when_to_ask_again(store, status, after):
    state = running_release()
    state.status = ReleaseStatus(status)
    state = put(store, state)
    reads = store.reads
    code, body, headers = handle("GET", f"/api/release/{state.release_id}/state", {}, store)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert store.reads - reads == 1
    data = json.loads(body)
    assert (data["status"], data["refresh_after_s"], data["terminal"]) == (status, after, after is None)
    page = handle("GET", f"/release/{state.release_id}", {}, store)[1]
    shape = re.search(r'data-shape="([^"]+)"', page).group(1)
    assert data["shape"] == shape.replace("&amp;", "&"), "the page and the endpoint agree on what moved"
    assert handle("GET", "/api/release/nope/state", {}, store)[0] == 404


def test_api_release_json_matches_the_state_and_hides_internals(store):
    state = put(store, succeeded_release())
    status, body, headers = handle("GET", f"/api/release/{state.release_id}", {}, store)
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["release"]["status"] == "succeeded" and data["release"]["terminal"] is True
    assert [(s["id"], s["status"], s["attempt"]) for s in data["stages"]] == [
        (s.id, state.stages[s.id].status.value, state.stages[s.id].attempt) for s in PIPELINE.stages]
    assert data["release"]["approval"]["approver"] == "boss@example.com"
    assert "n-secret" not in body and "used_nonces" not in body and "outbox" not in body
    traffic = {s["id"]: s["traffic_percent"] for s in data["stages"] if s["traffic_percent"] is not None}
    assert traffic == {"prod-deploy": 10, "traffic-100": 100}


def test_api_releases_lists_summaries(store):
    state = put(store, running_release())
    data = json.loads(handle("GET", "/api/releases", {"limit": "5"}, store)[1])
    assert data["releases"][0]["release_id"] == state.release_id
    assert data["releases"][0]["current_stage"] == "unit"


@pytest.mark.parametrize("path, api", [("/release/nope", False), ("/api/release/nope", True), ("/elsewhere", False)])
def test_unknown_release_or_page_is_404(store, path, api):
    status, body, headers = handle("GET", path, {}, store)
    assert status == 404
    if api:
        assert json.loads(body) == {"error": "unknown release 'nope'"}
    else:
        assert headers["Content-Type"].startswith("text/html")


def test_only_get_is_served(store):
    status, _, headers = handle("POST", "/", {}, store)
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_safe_url_keeps_only_http_links():
    assert safe_url("https://x/log") == "https://x/log" and safe_url("http://127.0.0.1/l") == "http://127.0.0.1/l"
    assert safe_url("javascript:alert(1)") == "" and safe_url("data:text/html,x") == "" and safe_url(None) == ""


def test_wsgi_app_serves_the_same_answers(store):
    state = put(store, succeeded_release())
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(wsgi_app(store)({"REQUEST_METHOD": "GET", "PATH_INFO": f"/api/release/{state.release_id}",
                                     "QUERY_STRING": ""}, start_response))
    assert seen["status"] == "200 OK" and json.loads(body)["release"]["release_id"] == state.release_id


def test_a_release_queued_for_an_environment_shows_the_queued_stage(store):
    state = running_release()
    state.stages["unit"].status = StageStatus.SUCCEEDED
    state.stages["staging-smoke"].status = StageStatus.QUEUED
    state.status, state.waiting_for = ReleaseStatus.QUEUED, "staging"
    put(store, state)
    status, body, _ = handle("GET", f"/release/{state.release_id}", {}, store)
    box = parse(body).stages["staging-smoke"][0]
    assert box["data-status"] == "queued"
    assert "queued: another release holds staging" in body
    assert 'data-terminal="false"' in body, "a queued release can still move: keep refreshing"
    summary = json.loads(handle("GET", "/api/releases", {}, store)[1])["releases"][0]
    assert (summary["status"], summary["current_stage"], summary["waiting_for"]) == ("queued", "staging-smoke", "staging")


def test_notices_name_the_command_to_run_and_link_a_page_that_exists(store):
    from shared.adapters.notify.messages import format_notice
    from shared.domain.commands import NoticeKind, Notify

    state = succeeded_release()
    put(store, state)
    _, text = format_notice(state, Notify(state.release_id, NoticeKind.STAGE_FAILED, "e2e", "e2e failed"),
                            "https://dash.example.com/")
    assert f'relctl replay {state.release_id} e2e --reason "what was fixed"' in text
    assert "publishing" not in text
    link = next(line for line in text.splitlines() if line.startswith("Dashboard: ")).split(": ", 1)[1]
    path = link.removeprefix("https://dash.example.com")
    status, body, _ = handle("GET", path, {}, store)
    assert status == 200 and state.release_id in body
    _, text = format_notice(state, Notify(state.release_id, NoticeKind.APPROVAL_NEEDED, "approval", "waits"))
    assert f"relctl approve {state.release_id}" in text and f"relctl reject {state.release_id} --reason" in text


def test_the_timeline_and_the_notes_are_html_with_every_value_escaped(store):
    state = succeeded_release()
    state.timeline = [
        {"at": state.created_at + 60, "kind": "rejected", "by": "boss@example.com", "stage": "approval",
         "attempt": 1, "reason": "<script>alert(1)</script> not yet"},
        {"at": state.created_at + 90, "kind": "approval links re-sent", "by": "ops@example.com",
         "stage": "approval", "reason": "fixed"}]
    put(store, state)
    body = handle("GET", f"/release/{state.release_id}", {}, store)[1]
    timeline = body[body.index("<ol class=\"timeline\""):body.index("</ol>")]
    assert "<b>rejected</b> approval (attempt 1) by boss@example.com: &lt;script&gt;alert(1)&lt;/script&gt;" in timeline
    assert "<b>approval links re-sent</b> approval by ops@example.com: fixed" in timeline
    notes = body[body.index('data-field="notes"'):]
    assert "<h2>Timeline</h2>" in notes and "<table>" in notes and "<script>alert" not in body
    data = json.loads(handle("GET", f"/api/release/{state.release_id}", {}, store)[1])
    assert data["timeline"][0]["text"].endswith("rejected approval (attempt 1) by boss@example.com: "
                                                "<script>alert(1)</script> not yet")


def test_the_freeze_banner_shows_the_command_as_code_not_backticks():
    from shared.ui.dashboard import release_page

    state = succeeded_release()
    state.status = ReleaseStatus.RUNNING
    progress = {"text": "", "stalled_text": "", "freeze_events": [],
                "freeze_text": "prod is frozen by ops@example.com since 2027-01-15T08:00:00Z: <quarter> close; "
                               "no release enters prod until `relctl unfreeze`"}
    html = release_page(state, PIPELINE, "n", progress)
    banner = re.search(r"<p class=\"reason\" data-freeze>(.*?)</p>", html).group(1)
    assert banner.endswith("until <code>relctl unfreeze</code>") and "`" not in banner
    assert "&lt;quarter&gt; close" in banner  # still escaped


def test_a_release_waiting_for_approval_says_who_may_approve_and_how():
    from shared.domain.state import StageState
    from shared.ui.dashboard import release_page

    state = succeeded_release()
    state.status = ReleaseStatus.AWAITING_APPROVAL
    state.approval = {}
    state.stages["approval"] = StageState(status=StageStatus.WAITING, attempt=1, started_at=T0, deadline=T0 + 3600)
    html = release_page(state, PIPELINE, "n", {"text": "", "stalled_text": "", "freeze_text": "", "read_at": T0})
    live = re.findall(r"<li data-live>(.*?)</li>", html)
    assert live == [f"to decide, boss@example.com opens the link mailed to them, or runs <code>relctl approve "
                    f"{state.release_id}</code> (relctl reject, with --reason, says no)"], live


def test_the_where_page_lists_what_each_service_serves_and_the_release_behind_it():
    from shared.app.ports import ServingRevision
    from shared.app.where import Placement

    placements = {"mini": [Placement("prod", "web", ServingRevision("web-2", 90, "", "eu-docker.pkg.dev/p/r/web:v1",
                                                                     "1-2-3", "abcdef1", T0), "acme-app-1", "prod-deploy",
                                     T0 + 5),
                           Placement("prod", "web", ServingRevision("web-1", 10), "", "", None)]}
    status, html, _ = handle("GET", "/where", {}, FakeStore(), where=lambda: placements)
    assert status == 200
    rows = re.findall(r'<tr data-service="web" data-environment="prod">(.*?)</tr>', html, re.S)
    assert len(rows) == 2
    assert "<code>web-2</code>" in rows[0] and "90 %" in rows[0] and "1-2-3" in rows[0]
    assert 'href="release/acme-app-1"' in rows[0] and "2027-01-15T08:00:05Z" in rows[0]
    assert "no release we know" in rows[1]
    status, body, _ = handle("GET", "/api/where", {}, FakeStore(), where=lambda: placements)
    assert json.loads(body)["apps"][0]["placements"][0]["serving"]["percent"] == 90
    assert handle("GET", "/where", {}, FakeStore())[0] == 404


def test_production_runs_says_what_prod_serves_now():
    """Issue 26: the approval page said "nothing released to prod yet" while prod served 0.9.0."""
    from shared.app.ports import ServingRevision
    from shared.app.where import Placement, prod_runs_text

    assert prod_runs_text([]) == "nothing serves in prod yet"
    assert prod_runs_text([
        Placement("staging", "web", ServingRevision("web-s", 100, version="1-0-0")),
        Placement("prod", "web", ServingRevision("web-9", 90, version="0-9-0", commit="1234567")),
        Placement("prod", "web", ServingRevision("web-10", 10, version="1-0-0", commit="abcdef1"), "acme-app-1"),
        Placement("prod", "web", ServingRevision("web-old", 0, tag="canary"))]) == (
        "web: 90 % version 0-9-0 (commit 1234567); web: 10 % version 1-0-0 (commit abcdef1, release acme-app-1)")
