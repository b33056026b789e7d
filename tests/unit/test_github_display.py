"""A GitHub call that keeps failing shows on the dashboard and in ``relctl show``, not as a stuck stage."""
from __future__ import annotations

from shared.app.github_reporting import GitHubReporting, reporting_text
from shared.testing.fakes import FakeClock, FakeGitHub, FakeGitHubLedger, FakeStore
from shared.ui.cli import show_text
from shared.ui.dashboard import handle, release_progress, with_github
from tests.unit.test_github_reports import BUILD, PIPELINE, STAGING, release


def failing_world():
    store, ledger, github, clock = FakeStore(), FakeGitHubLedger(), FakeGitHub(), FakeClock(1_800_000_000.0)
    state = release(done=BUILD, running=STAGING[:1])
    store.save_pipeline(PIPELINE)
    state.pipeline_digest = PIPELINE.digest
    store.create(state)
    github.down = True
    GitHubReporting(github, ledger, clock).sync(PIPELINE, state)
    return store, ledger, state


def test_the_dashboard_and_relctl_show_say_which_call_keeps_failing():
    store, ledger, state = failing_world()
    text = reporting_text(ledger.get(state.release_id))
    assert "NOT SENT YET, failing 1 time(s): 502" in text and "next try" in text
    status, page, _ = handle("GET", f"/release/{state.release_id}", {}, store, github=ledger, now=1_800_000_000.0)
    assert status == 200 and "NOT SENT YET" in page and f"https://github.com/{state.repo}/deployments" in page
    shown = show_text(state, PIPELINE, progress=with_github(release_progress(state, PIPELINE, None, 0.0), ledger, state))
    assert "GitHub: 0 update(s) sent; NOT SENT YET" in shown
    assert "running" in shown  # the stage itself is not held


def test_nothing_is_shown_without_reports():
    store, ledger, state = failing_world()
    assert with_github({}, FakeGitHubLedger(), state) == {}
    ledger.records[state.release_id]["not_installed"] = True
    assert with_github({}, ledger, state) == {}
