"""HTML of the approval function. Every value is escaped; no script runs on any page.

Mail scanners open links (GET, HEAD) on their own, so the confirm page only shows
a form; the decision is the POST its buttons send. No auto-submit, no JavaScript.
"""
from __future__ import annotations

import datetime as dt
import json
from html import escape
from typing import Any, Iterable

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}"
    ".succeeded{color:#1a7f37}.failed{color:#c00}.refused{border-left:4px solid #c00;padding-left:1rem}"
    "button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.6rem}textarea{width:100%}"
)
# Sent with every answer: the token sits in the URL, so no referrer and no caching;
# the CSP forbids every script and lets the form post only back to this function.
SECURITY_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=robots content="noindex,nofollow">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    )


def refusal_page(title: str, message: str, unchanged: bool = True) -> str:
    tail = "<p>Nothing was changed.</p>" if unchanged else ""
    return _page(title, f"<p class=refused>{escape(message)}</p>{tail}")


def done_page(approved: bool, release_id: str, tag: str, approver: str) -> str:
    word = "approved" if approved else "rejected"
    return _page(
        f"Release {word}",
        f"<p>{escape(approver)} {word} release <b>{escape(release_id)}</b> ({escape(tag)}).</p>"
        "<p>The decision was recorded and sent to the pipeline; the link cannot be used again.</p>",
    )


def confirm_page(
    *,
    release: Any,
    stage_label: str,
    approver: str,
    expires_at: float,
    stage_rows: Iterable[tuple[str, str, str]],
    chaos: dict[str, Any] | None,
    token: str,
    digest: str = "",
) -> str:
    rows = "".join(
        f"<tr><td>{escape(label)}</td><td class={escape(status)}>{escape(status)}</td><td>{escape(summary)}</td></tr>"
        for label, status, summary in stage_rows
    ) or "<tr><td colspan=3>no stage results recorded</td></tr>"
    if chaos is None:
        chaos_html = "<p>Chaos smoke: not run.</p>"
    else:
        chaos_html = f"<p>Chaos smoke verdict:</p><pre>{escape(json.dumps(chaos, indent=1, sort_keys=True)[:2000])}</pre>"
    body = (
        "<table>"
        f"<tr><th>Release</th><td>{escape(release.release_id)}</td></tr>"
        f"<tr><th>Version</th><td>{escape(release.version)} (tag {escape(release.tag)})</td></tr>"
        f"<tr><th>Commit</th><td>{escape(release.commit)}</td></tr>"
        f"<tr><th>Image digest</th><td>{escape(digest or 'not reported by the build')}</td></tr>"
        f"<tr><th>Repository</th><td>{escape(release.repo)} {escape(release.ref)}</td></tr>"
        f"<tr><th>Pushed by</th><td>{escape(release.pushed_by)}</td></tr>"
        f"<tr><th>Stage</th><td>{escape(stage_label)}</td></tr>"
        f"<tr><th>Approver</th><td>{escape(approver)}</td></tr>"
        f"<tr><th>Link expires</th><td>{escape(_when(expires_at))}</td></tr>"
        "</table><h2>Staging results</h2>"
        f"<table><tr><th>Stage</th><th>Status</th><th>Result</th></tr>{rows}</table>"
        f"{chaos_html}"
        '<h2>Decision</h2><form method=post action="">'
        f'<input type=hidden name=token value="{escape(token)}">'
        '<p><label for=reason>Reason (optional; kept with the decision)</label><br>'
        "<textarea id=reason name=reason rows=3 maxlength=500></textarea></p>"
        "<button type=submit name=decision value=approve>Approve</button>"
        "<button type=submit name=decision value=reject>Reject</button>"
        "</form>"
    )
    return _page(f"Approve release {release.release_id}?", body)
