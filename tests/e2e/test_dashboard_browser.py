"""The dashboard in a real browser (Debian's /usr/bin/chromium driven by Playwright).

Releases are produced in the Firestore emulator by the dispatcher rig; the dashboard
is served by its WSGI app over the same store on a loopback port. The page must show
each stage with the status Firestore holds, and must follow a running release by
itself (its refresh script), without a reload.
"""
from __future__ import annotations

import os
import uuid

import pytest

from shared.ui.dashboard import wsgi_app
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig
from tests.e2e.browser import CHROMIUM, OUTPUT, contrast_ratios, page_statuses, page_width, served_on_loopback
from tests.integration.test_cli import current, release_at, step

pytestmark = [
    pytest.mark.emulators,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


@pytest.fixture
def rig(emulators, unique_prefix):
    return make_rig(emulators["project"], unique_prefix)


@pytest.fixture
def dashboard_url(rig):
    with served_on_loopback(wsgi_app(rig.store)) as url:
        yield url


def stored_statuses(rig, release_id) -> dict[str, str]:
    return {sid: st.status.value for sid, st in rig.state(release_id).stages.items()}


def finished_release(rig):
    rid = release_at(rig, "lint", commit=uuid.uuid4().hex[:16])
    for _ in range(60):  # bounded: a step the gate refuses must fail the test, not hang it
        stage = current(rig, rid)
        if not stage:
            break
        result = {"tests": 31, "failures": 0, "errors": 0, "skipped": 2,
                  "log_url": f"https://console.cloud.google.com/cloud-build/builds/{stage}"} if stage in ("lint", "unit") else None
        rig.clock.advance(37)
        step(rig, rid, result=result)
    assert rig.state(rid).status.value == "succeeded", rig.state(rid).reason
    return rid


def test_release_page_shows_each_stage_with_its_firestore_status(rig, dashboard_url, page):
    done = finished_release(rig)
    rig.clock.advance(3600)
    stopped = release_at(rig, "staging-deploy", commit=uuid.uuid4().hex[:16])
    step(rig, stopped, outcome="failed", reason="revision web-x failed: <port 8080> not answering")

    page.goto(dashboard_url + "/")
    rows = page.eval_on_selector_all("[data-release-row]", "els => els.map(e => e.dataset.releaseRow)")
    assert rows == [stopped, done]
    page.click(f"a[href='release/{done}']")
    page.wait_for_selector("div[data-stage]")
    assert page_statuses(page) == stored_statuses(rig, done)
    assert page.inner_text("[data-approval]").startswith("approved by boss@example.com at ")
    assert "10 % at" in page.inner_text("[data-traffic]") and "100 % at" in page.inner_text("[data-traffic]")
    unit = page.locator("div[data-stage=unit]")
    assert "31 tests, 0 failures" in unit.inner_text()
    assert unit.locator("a[data-field=log]").get_attribute("href").endswith("/builds/unit")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

    page.goto(f"{dashboard_url}/release/{stopped}")
    assert page_statuses(page) == stored_statuses(rig, stopped)
    assert page.locator("div[data-stage=staging-deploy]").get_attribute("data-status") == "failed"
    assert "<port 8080> not answering" in page.inner_text("[data-field=release-reason]")  # shown as text
    page.screenshot(path=str(OUTPUT / "dashboard-stopped.png"), full_page=True)
    assert page.errors == []


def test_page_follows_a_running_release_without_reload(rig, dashboard_url, page):
    rid = release_at(rig, "unit", commit=uuid.uuid4().hex[:16])
    page.goto(f"{dashboard_url}/release/{rid}")
    assert page.locator("div[data-stage=unit]").get_attribute("data-status") == "running"
    page.evaluate("window.__sameDocument = true")  # lost if the page reloads
    rig.clock.advance(12)
    step(rig, rid)  # unit succeeds, staging-migrate starts
    page.wait_for_function("() => document.querySelector('div[data-stage=unit]').dataset.status === 'succeeded'",
                           timeout=10_000)
    page.wait_for_function(
        "() => document.querySelector('div[data-stage=\"staging-migrate\"]').dataset.status === 'running'", timeout=10_000)
    assert page_statuses(page) == stored_statuses(rig, rid)
    assert "attempt 1 · 12.0s" in page.inner_text("div[data-stage=unit]")
    assert page.inner_text("[data-approval]") == "none yet"
    while current(rig, rid):
        step(rig, rid)
    assert rig.state(rid).status is ReleaseStatus.SUCCEEDED
    page.wait_for_function("() => document.querySelector('[data-release]').dataset.releaseStatus === 'succeeded'",
                           timeout=10_000)
    assert page_statuses(page) == stored_statuses(rig, rid)
    assert page.inner_text("[data-field=release-status]") == "succeeded"
    assert page.inner_text("[data-approval]").startswith("approved by boss@example.com")
    assert "100 % at" in page.inner_text("[data-traffic]")
    # The notes are HTML (a heading per section), brought up to date without a reload.
    page.wait_for_selector("[data-field=notes] h2:text('Traffic')", timeout=10_000)
    assert "Release " in page.inner_text("#live") and page.get_attribute("#live", "role") == "status"
    assert page.evaluate("window.__sameDocument") is True, "followed by the refresh script, not by reloading"
    assert page.errors == []


EVERY_STATUS = sorted({s.value for s in ReleaseStatus} | {s.value for s in StageStatus})


@pytest.mark.parametrize("width", [1400, 400])
def test_dashboard_fits_the_screen_and_every_badge_is_readable(rig, dashboard_url, page, width):
    done = finished_release(rig)
    rig.clock.advance(3600)
    stopped = release_at(rig, "staging-deploy", commit=uuid.uuid4().hex[:16])
    step(rig, stopped, outcome="failed", reason="revision sample-web-staging-00002 failed: port 8080 not answering " * 3)
    waiting = release_at(rig, "approval", commit=uuid.uuid4().hex[:16])
    page.set_viewport_size({"width": width, "height": 900})
    OUTPUT.mkdir(exist_ok=True)
    for name, path in (("list", "/"), ("release", f"/release/{done}"), ("stopped", f"/release/{stopped}"),
                       ("waiting", f"/release/{waiting}")):
        page.goto(dashboard_url + path)
        page.screenshot(path=str(OUTPUT / f"dashboard-{name}-{width}.png"), full_page=True)
        scroll, viewport = page_width(page)
        assert scroll <= viewport, f"{path} is {scroll}px wide in a {viewport}px window"
    # Contrast of every status badge, as rendered: the statuses no release shows right now
    # are added as badges to this page, so they are styled by the page's own stylesheet.
    page.evaluate("""statuses => { const box = document.createElement('p'); document.querySelector('main').append(box);
        statuses.forEach(s => { const b = document.createElement('span'); b.className = 'badge';
          b.dataset.status = s; b.textContent = s; box.append(b, ' '); }); }""", EVERY_STATUS)
    badges = contrast_ratios(page, ".badge")
    assert {b["status"] for b in badges} == set(EVERY_STATUS)
    low = [(b["status"], round(b["ratio"], 2)) for b in badges if b["ratio"] < 4.5]
    assert low == [], f"badges below WCAG AA 4.5:1: {low}"
    labels = contrast_ratios(page, "div[data-stage] .st, div[data-stage] .meta, div[data-stage] .detail")
    low = [(b["status"], b["text"][:20], round(b["ratio"], 2)) for b in labels if b["ratio"] < 4.5]
    assert labels and low == [], f"stage box text below 4.5:1: {low}"
    assert page.errors == []
