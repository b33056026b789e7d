"""Debian's Chromium for the browser tests: where it is, how it starts, what a page shows."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a page's parallel requests (refresh script, assets) are served at once


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # the browser's requests would flood the test output
        pass


@contextlib.contextmanager
def served_on_loopback(app) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port for the browser; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def page_statuses(page) -> dict[str, str]:
    """data-status of every stage box (div[data-stage]) in the page."""
    return page.eval_on_selector_all(
        "div[data-stage]", "els => Object.fromEntries(els.map(e => [e.dataset.stage, e.dataset.status]))")


def page_width(page) -> tuple[int, int]:
    """(document scrollWidth, viewport width): the page fits when the first is not larger."""
    return page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")


# WCAG 2.x contrast ratio of an element's computed text colour on its computed background
# (the nearest ancestor with an opaque one), from the styles Chromium actually applied.
CONTRAST_JS = """
els => els.map(el => {
  const rgb = s => s.match(/[\\d.]+/g).slice(0, 4).map(Number);
  const lum = c => {
    const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  let bg = el, back = rgb(getComputedStyle(bg).backgroundColor);
  while (back.length === 4 && back[3] === 0 && bg.parentElement) { bg = bg.parentElement; back = rgb(getComputedStyle(bg).backgroundColor); }
  if (back.length === 4 && back[3] === 0) { back = [255, 255, 255]; }
  const fore = rgb(getComputedStyle(el).color);
  const [hi, lo] = [lum(fore), lum(back)].sort((a, b) => b - a);
  return {status: el.dataset.status || el.closest('[data-status]').dataset.status,
          text: el.textContent.trim(), ratio: (hi + 0.05) / (lo + 0.05)};
})
"""


def contrast_ratios(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(selector, CONTRAST_JS)
