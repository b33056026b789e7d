"""The approval confirm page in Debian's Chromium, at desktop and phone width.

The page is served by the real ApprovalService (fakes behind it: the unit tests' World)
through a small WSGI app on loopback, so the browser sends the real GET and POST.
"""
from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.e2e.browser import CHROMIUM, OUTPUT, page_width, served_on_loopback
from tests.unit.test_approval_service import APPROVER, World

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")


@pytest.fixture
def served():
    world = World()
    world.release.stages["staging-smoke"].result = {"checks": [
        {"path": "/", "status": 200, "attempts": 1, "latency_ms": 14.2},
        {"path": "/health/liveliness", "status": 200, "attempts": 1, "latency_ms": 6.9}]}
    world.release.stages["unit"].result = {"tests": 412, "failures": 0, "errors": 0, "skipped": 3}
    world.release.changes = {
        "commits": [{"id": "9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6", "message": "Crawler: retry robots.txt fetches",
                     "author": "Ada Lovelace"},
                    {"id": "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
                     "message": "Release-Version: 1.4.0 and a rather long first line that goes on and on past the screen",
                     "author": "Grace Hopper"}],
        "total": 2, "compare_url": "https://github.com/acme/app/compare/1111111...abcdef1", "before": "1111111" + "2" * 33}
    world.save_release()  # the store keeps a copy; the page reads the stored release

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        form = {}
        if environ["REQUEST_METHOD"] == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            form = dict(urllib.parse.parse_qsl(environ["wsgi.input"].read(size).decode()))
        headers = {"User-Agent": environ.get("HTTP_USER_AGENT", "")}
        status, body, answer_headers = world.pages.handle(environ["REQUEST_METHOD"], query, form, headers)
        start_response(f"{status} X", list(answer_headers.items()))
        return [body.encode()]

    token = world.send_links()[APPROVER]
    with served_on_loopback(app) as base:
        yield world, f"{base}/?token={urllib.parse.quote(token)}", token


@pytest.mark.parametrize("width", [1400, 400])
def test_confirm_page_fits_and_puts_the_decision_first(served, page, width):
    world, url, _ = served
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(url)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"approval-{width}.png"), full_page=True)
    scroll, viewport = page_width(page)
    assert scroll <= viewport, f"the approval page is {scroll}px wide in a {viewport}px window"
    summary = page.inner_text("section.summary")
    assert world.release.version in summary and world.release.commit in summary
    assert "412 tests, 0 failures" in page.text_content("ul.evidence")  # folded: in the page, not on the first screen
    assert "/ 200 in 14 ms" in page.text_content("ul.evidence")  # folded: in the page, not on the first screen
    assert "Crawler: retry robots.txt fetches" in page.text_content("ul.commits")  # folded: in the page, not on the first screen
    # One primary button, visible without opening anything; Reject is folded away.
    assert page.locator("button.primary").is_visible() and not page.locator("button.danger").is_visible()
    box = page.locator("button.primary").bounding_box()
    assert box["x"] + box["width"] <= viewport
    assert page.errors == []


def test_reject_asks_for_a_reason_before_it_is_sent(served, page):
    world, url, token = served
    page.set_viewport_size({"width": 400, "height": 900})
    page.goto(url)
    page.click("details.reject summary")
    page.click("button.danger")  # empty reason: the browser keeps the form (required field)
    assert page.url == url and world.publisher.messages == []
    page.fill("#reject-reason", "the migration cannot be rolled back")
    page.click("button.danger")
    page.wait_for_selector("text=Release rejected")
    page.screenshot(path=str(OUTPUT / "approval-rejected-400.png"), full_page=True)
    ((_, data, _),) = world.publisher.messages
    assert data["approve"] is False and data["reason"] == "the migration cannot be rolled back"
