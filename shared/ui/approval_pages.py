"""HTML of the approval function, from Jinja2 templates (autoescaped); no script runs on any page.

Mail scanners open links (GET, HEAD) on their own, so the confirm page only shows
forms; the decision is the POST a button sends. No auto-submit, no JavaScript:
Reject sits in a ``<details>`` with a required reason, so one stray tap cannot
reject, and Approve is the one primary button.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping

from shared.ui.notes import safe_url
from shared.ui.render import page

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:42rem;margin:0 auto;padding:1rem;
 color:#1f2328;line-height:1.45;overflow-wrap:anywhere}
h1{font-size:1.35rem;margin:.4rem 0 .8rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
code{font-size:.9em}.muted{color:#57606a}
.summary{background:#f6f8fa;border:1px solid #d0d7de;border-radius:.5rem;padding:.6rem .9rem;margin-top:1.2rem}
.lead{margin:.2rem 0 .6rem;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem .9rem;margin:0}dt{font-weight:600}dd{margin:0}
@media (max-width:480px){dl{grid-template-columns:1fr}dd{margin-bottom:.4rem}}
.digest{word-break:break-all}
ul.commits,ul.evidence{list-style:none;padding:0;margin:0}
ul.commits li,ul.evidence li{border-bottom:1px solid #d0d7de;padding:.4rem 0}
.evidence .mark{display:inline-block;width:1.3rem;font-weight:700}
.evidence [data-status=succeeded] .mark{color:#1a7f37}.evidence [data-status=failed] .mark{color:#cf222e}
.evidence .status{color:#57606a;font-size:.9em}.evidence .facts{display:block;margin-left:1.3rem;color:#1f2328}
.chaos{margin-top:.6rem}
form{margin:.6rem 0}label{display:block;font-weight:600;margin:.4rem 0 .2rem}
textarea{width:100%;box-sizing:border-box;font:inherit;padding:.4rem}
button{font:inherit;font-weight:600;border-radius:.4rem;padding:.7rem 1.1rem;margin-top:.6rem;cursor:pointer;
 width:100%;max-width:24rem}
button.primary{background:#1a7f37;color:#fff;border:0;font-size:1.05rem}
button.danger{background:#fff;color:#a40e26;border:2px solid #a40e26}
details.reject{margin-top:1rem}details.reject summary{cursor:pointer;color:#a40e26;font-weight:600}
.refused{border-left:4px solid #cf222e;padding-left:1rem}.done{border-left:4px solid #1a7f37;padding-left:1rem}
"""
# Sent with every answer: the token sits in the URL, so no referrer and no caching;
# the CSP forbids every script and lets the form post only back to this function.
SECURITY_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _message(title: str, message: str, *, refused: bool, note: str = "") -> str:
    return page("approval_message.html", title=title, message=message, refused=refused, note=note,
                css=STYLE, refresh_s=0, script="", nonce="")


def refusal_page(title: str, message: str, unchanged: bool = True) -> str:
    return _message(title, message, refused=True, note="Nothing was changed." if unchanged else "")


def done_page(approved: bool, release_id: str, tag: str, approver: str) -> str:
    word = "approved" if approved else "rejected"
    return _message(f"Release {word}", f"{approver} {word} release {release_id} ({tag}).", refused=False,
                    note="The decision was recorded and sent to the pipeline; the link cannot be used again.")


def chaos_text(chaos: Mapping[str, Any] | None) -> str:
    """The chaos verdict in one sentence instead of a JSON dump."""
    if chaos is None:
        return "Chaos smoke: not run (optional)."
    status = chaos.get("status", "")
    if "passed" not in chaos:
        return f"Chaos smoke: {status}, no verdict yet."
    parts = []
    if isinstance(chaos.get("error_rate"), (int, float)):
        limit = chaos.get("max_error_rate")
        parts.append(f"error rate {chaos['error_rate']:.2%}" + (f" (limit {limit:.0%})" if isinstance(limit, (int, float)) else ""))
    if isinstance(chaos.get("p95_ms"), (int, float)):
        limit = chaos.get("max_p95_ms")
        parts.append(f"P95 {chaos['p95_ms']:.0f} ms" + (f" (limit {limit:.0f} ms)" if isinstance(limit, (int, float)) else ""))
    verdict = "passed" if chaos["passed"] else "FAILED"
    reasons = "; ".join(str(r) for r in chaos.get("reasons") or [])
    return f"Chaos smoke {verdict}: {', '.join(parts) or 'no figures'}" + (f" — {reasons}" if reasons else "") + "."


def confirm_page(
    *,
    release: Any,
    stage_label: str,
    approver: str,
    expires_at: float,
    stage_rows: Iterable[tuple[str, str, str, str]],
    chaos: dict[str, Any] | None,
    token: str,
    digest: str = "",
    prod_runs: str = "",
    dashboard_url: str = "",
) -> str:
    changes = getattr(release, "changes", None) or {}
    before = str(changes.get("before") or "")
    return page(
        "approval_confirm.html",
        title=f"Approve {release.release_id}?", css=STYLE, refresh_s=0, script="", nonce="",
        release=release, stage_label=stage_label, approver=approver, expires=_when(expires_at),
        evidence=[{"label": label, "status": status, "summary": summary, "log": safe_url(log)}
                  for label, status, summary, log in stage_rows],
        chaos_text=chaos_text(chaos), token=token, digest=digest, prod_runs=prod_runs, dashboard_url=safe_url(dashboard_url),
        commits=[c for c in changes.get("commits") or [] if isinstance(c, Mapping)],
        before=before if before.strip("0") else "", total=int(changes.get("total") or 0),
        compare_note=str(changes.get("note") or "")[:200], compared=changes.get("source") == "github compare",
        compare_url=changes.get("compare_url") if str(changes.get("compare_url", "")).startswith("https://") else "",
    )
