"""Every page at a phone's 360x740 and a laptop's 1280x800 in Debian's Chromium: nothing wider than
the window, the Approve button's top inside the first 740 px (a one-line summary above folded
evidence), and each stage shown once per view."""
from __future__ import annotations

import os

import pytest

from shared.app.ports import ServingRevision
from shared.app.where import Placement
from shared.domain.state import ReleaseStatus, StageState, StageStatus
from shared.testing.fakes import FakeStore
from shared.ui.dashboard import wsgi_app
from tests.e2e.browser import CHROMIUM, OUTPUT, page_width, served_on_loopback
from tests.e2e.test_approval_browser import served  # noqa: F401 - the approval page's fixture
from tests.unit.test_notes import PIPELINE, T0, succeeded_release

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
SIZES = [(360, 740), (1280, 800)]
# Elements that are rendered (not display:none, not inside a closed <details>).
VISIBLE_STAGES = """() => {
  const seen = {};
  for (const el of document.querySelectorAll('[data-stage], [data-row]')) {
    if (!el.checkVisibility()) continue;
    const id = el.dataset.stage || el.dataset.row;
    seen[id] = (seen[id] || 0) + 1;
  }
  return seen;
}"""


@pytest.fixture(scope="module")
def dashboard():
    store = FakeStore()
    store.save_pipeline(PIPELINE)
    done = succeeded_release()
    done.stages["e2e"].reason = "a very long reason without spaces " + "x" * 180
    assert store.create(done)
    waiting = succeeded_release()
    waiting.release_id, waiting.status, waiting.approval = "acme-app-222222222222", ReleaseStatus.AWAITING_APPROVAL, {}
    waiting.stages["approval"] = StageState(status=StageStatus.WAITING, attempt=1, started_at=T0, deadline=T0 + 3600)
    assert store.create(waiting)
    where = {"mini": [Placement("prod", "web", ServingRevision(
        "web-0123456789", 100, "", "europe-west3-docker.pkg.dev/acme-prod/apps/web@sha256:" + "a" * 64, "1-2-3",
        "abcdef1", T0), done.release_id, "traffic-100", T0 + 5)]}
    with served_on_loopback(wsgi_app(store, where=lambda: where)) as base:
        yield base, done, waiting


@pytest.mark.parametrize("width, height", SIZES)
def test_no_dashboard_page_is_wider_than_the_window_and_each_stage_shows_once(dashboard, page, width, height):
    base, done, waiting = dashboard
    page.set_viewport_size({"width": width, "height": height})
    OUTPUT.mkdir(exist_ok=True)
    for name, path in (("list", "/"), ("release", f"/release/{done.release_id}"),
                       ("waiting", f"/release/{waiting.release_id}"), ("where", "/where")):
        page.goto(base + path)
        page.screenshot(path=str(OUTPUT / f"phone-{name}-{width}.png"), full_page=True)
        scroll, viewport = page_width(page)
        assert scroll <= viewport, f"{path} is {scroll}px wide in a {viewport}px window"
        if name in ("release", "waiting"):
            seen = page.evaluate(VISIBLE_STAGES)
            assert seen and set(seen.values()) == {1}, seen
            assert set(seen) == {s.id for s in PIPELINE.stages}
    assert page.errors == []


@pytest.mark.parametrize("width, height", SIZES)
def test_the_approve_button_is_on_the_first_screen_of_the_approval_page(served, page, width, height):  # noqa: F811
    world, url, _ = served
    page.set_viewport_size({"width": width, "height": height})
    page.goto(url)
    page.screenshot(path=str(OUTPUT / f"phone-approval-{width}.png"), full_page=True)
    scroll, viewport = page_width(page)
    assert scroll <= viewport, f"the approval page is {scroll}px wide in a {viewport}px window"
    top = page.locator("button.primary").bounding_box()["y"]
    assert top + 40 <= 740, f"the Approve button starts {top:.0f}px down"
    summary = page.locator("[data-summary]")
    assert summary.is_visible() and summary.bounding_box()["y"] < top
    assert "passed" in summary.inner_text()
    labels = [li.locator(".what").text_content() for li in page.locator("ul.evidence li").all()]
    assert len(labels) == len(set(labels)), labels  # each stage once
    assert not page.locator("ul.evidence").is_visible(), "the evidence is folded"
    assert page.errors == []
