"""Debian's Chromium for the browser tests: where it is, how it starts, what a page shows."""
from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def page_statuses(page) -> dict[str, str]:
    """data-status of every stage box (div[data-stage]) in the page."""
    return page.eval_on_selector_all(
        "div[data-stage]", "els => Object.fromEntries(els.map(e => [e.dataset.stage, e.dataset.status]))")
