"""GitHub's compare on the approval page: the real adapter over HTTP against a loopback
stand-in (tests/github_compare_server.py), the bounded result, and the page's fallback."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from shared.adapters.github_compare import CompareUnavailable, GitHubCompare
from shared.app.compare import compared_changes, prod_commit
from shared.app.push import MAX_LISTED_COMMITS
from shared.domain.app_record import VersionFloor
from shared.testing.fakes import FakeStore, InMemoryAppRecords
from tests.github_compare_server import CompareServer
from tests.unit.test_approval_service import APPROVER, World, token_in

TOKEN = "ghp_secret-token-0123456789"
PROD = "1" * 40
HEAD = "abcdef1234567890"  # the commit World's release carries
HISTORY = [("0" * 39 + "9", "older", "Old"), (PROD, "what prod runs", "Ops"),
           *[(f"{i:040x}", f"change {i}\n\nbody", f"Dev {i}") for i in range(2, 26)], (HEAD, "Release 1.2.3", "Rel")]


@pytest.fixture
def github():
    server = CompareServer(TOKEN, "acme/app", HISTORY)
    yield server
    server.close()


def test_the_adapter_sends_the_documented_request_and_decodes_the_comparison(github):
    body = GitHubCompare(TOKEN, github.url).compare("acme/app", PROD, HEAD)
    assert (body["status"], body["total_commits"], len(body["commits"])) == ("ahead", 25, 25)
    (request,) = github.requests
    assert request["path"] == f"/repos/acme/app/compare/{PROD}...{HEAD}"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/vnd.github+json"
    assert request["headers"]["X-GitHub-Api-Version"] == "2022-11-28"


@pytest.mark.parametrize("token, base, mode, why", [
    ("wrong-token", PROD, "", "401"),
    (TOKEN, "f" * 40, "", "404"),
    (TOKEN, PROD, "garbage", "malformed response (not JSON)"),
    (TOKEN, PROD, "slow", "timeout"),
])
def test_every_failure_is_short_and_never_names_the_token(github, caplog, token, base, mode, why):
    github.mode = mode
    with pytest.raises(CompareUnavailable) as raised:
        GitHubCompare(token, github.url, timeout_s=0.3).compare("acme/app", base, HEAD)
    assert str(raised.value) == why
    assert token not in str(raised.value) and token not in repr(raised.value)
    with caplog.at_level(logging.DEBUG):
        world = World()
        changes = compared_changes(world.release, GitHubCompare(token, github.url, timeout_s=0.3), base)
    assert changes["note"] == f"GitHub compare unavailable: {why}"
    assert token not in caplog.text and why in caplog.text


def test_an_unreachable_api_is_a_note_not_a_failure():
    world = World()
    world.release.changes = {"commits": [{"id": "c1", "message": "own", "author": "A"}], "total": 1}
    changes = compared_changes(world.release, GitHubCompare(TOKEN, "http://127.0.0.1:9", timeout_s=0.3), PROD)
    assert changes["commits"] == world.release.changes["commits"]
    assert changes["note"] == "GitHub compare unavailable: ConnectionError"


def test_the_comparison_is_bounded_and_counts_every_commit(github):
    world = World()
    changes = compared_changes(world.release, GitHubCompare(TOKEN, github.url), PROD)
    assert changes["total"] == 25 and len(changes["commits"]) == MAX_LISTED_COMMITS
    assert changes["commits"][-1] == {"id": HEAD, "message": "Release 1.2.3", "author": "Rel"}
    assert changes["commits"][0]["message"] == "change 7"  # the newest 20, first lines only
    assert changes["before"] == PROD and changes["compare_url"].startswith("https://github.com/acme/app/compare/")


def test_without_prods_commit_the_push_before_is_the_base_and_else_a_note(github):
    world = World()
    world.release.changes = {"before": PROD, "commits": [], "total": 0}
    assert compared_changes(world.release, GitHubCompare(TOKEN, github.url), "")["total"] == 25
    world.release.changes = {"before": "0" * 40, "commits": [], "total": 0}  # a new branch: GitHub sends zeros
    assert compared_changes(world.release, GitHubCompare(TOKEN, github.url), "")["note"] == (
        "GitHub compare unavailable: prod's commit is not known")


def test_prods_commit_is_the_commit_of_the_version_floors_release():
    records, releases, world = InMemoryAppRecords(), FakeStore(), World()
    assert prod_commit(records, releases, "app") == ""
    releases.save_pipeline(world.releases.load_pipeline(world.release.pipeline_digest))
    releases.create(world.release)
    data, token = records.read("app")
    records.write("app", replace(data, version_floor=VersionFloor("1.2.2", world.release.release_id)), token)
    assert prod_commit(records, releases, "app") == HEAD


def test_the_approval_page_shows_the_compares_commits_and_total(github):
    world = World()
    world.service.compare_changes = lambda release: compared_changes(release, GitHubCompare(TOKEN, github.url), PROD)
    result = world.service.request(world.release, world.command)
    assert result["links_sent"] == 1 and len(github.requests) == 1  # one call per approval request
    world.release.changes = result["changes"]  # what the dispatcher stores on the release
    token = token_in(world.sender.sent[0][2])
    _, html, _ = world.get(token)
    assert "25 commits since the commit prod runs, from GitHub's compare." in html
    assert f"What changed since <code>{PROD[:7]}</code>" in html
    assert "<code>abcdef1</code> Release 1.2.3" in html and "5 earlier commits not listed" in html
    assert "unavailable" not in html and len(github.requests) == 1  # the page asks GitHub nothing


def test_the_approval_page_falls_back_to_the_push_and_says_why(github):
    world = World()
    world.release.changes = {"commits": [{"id": "0123456789abcdef", "message": "Own commit", "author": "Dev"}],
                             "total": 1, "compare_url": "https://github.com/acme/app/compare/a...b", "before": ""}
    world.service.compare_changes = lambda release: compared_changes(release, GitHubCompare("bad", github.url), PROD)
    result = world.service.request(world.release, world.command)
    world.release.changes = result["changes"]

    _, html, _ = world.get(token_in(world.sender.sent[0][2]))
    assert "GitHub compare unavailable: 401; showing the push's own commits." in html
    assert "<code>0123456</code> Own commit" in html and 'href="https://github.com/acme/app/compare/a...b"' in html
    assert "from GitHub" not in html and APPROVER in html
