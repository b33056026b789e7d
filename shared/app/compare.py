"""What a release brings since the commit prod runs, for the approval page.

Asked of GitHub's compare API once per approval request (ApprovalService.request; the
dispatcher keeps the answer as the release's ``changes``). Without a token, or when the
call fails, the push's own commits stay, with a short note saying why. Bounded like the
push's list (MAX_LISTED_COMMITS; Firestore's 1 MiB per release document).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol

from shared.app.ports import AppRecords, ReleaseStore
from shared.app.push import MAX_LISTED_COMMITS, listed_commit
from shared.domain.errors import PipelineError
from shared.domain.state import ReleaseState

log = logging.getLogger(__name__)


class Comparer(Protocol):
    def compare(self, repo: str, base: str, head: str) -> Mapping[str, Any]:
        """GitHub's comparison of ``base...head``; raises a PipelineError whose text is safe to show."""


def prod_commit(records: AppRecords, releases: ReleaseStore, app: str) -> str:
    """The commit of the release that entered prod last (the version floor's release), "" if none."""
    release_id = records.read(app)[0].version_floor.release_id
    got = releases.get(release_id) if release_id else None
    return got[0].commit if got else ""


def compared_changes(release: ReleaseState, comparer: Comparer, base: str) -> dict[str, Any]:
    """The compare's commits (newest MAX_LISTED_COMMITS) and total since ``base``; on any failure
    the push's own list with ``note`` saying why. Never raises: the approval goes out regardless."""
    own = dict(release.changes)
    before = str(own.get("before") or "")
    base = base or (before if before.strip("0") else "")  # else what the branch pointed at before the push
    if not base:
        return {**own, "note": "GitHub compare unavailable: prod's commit is not known"}
    try:
        body = comparer.compare(release.repo, base, release.commit)
        commits = [c for c in body["commits"] if isinstance(c, Mapping)]
        listed = [listed_commit(c.get("sha"), (c.get("commit") or {}).get("message"),
                                ((c.get("commit") or {}).get("author") or {}).get("name"))
                  for c in commits[-MAX_LISTED_COMMITS:]]
        total = body.get("total_commits")
        html_url = str(body.get("html_url") or "")
    except (PipelineError, AttributeError, TypeError) as exc:
        why = str(exc) if isinstance(exc, PipelineError) else "malformed response"
        log.warning("release %s: GitHub compare unavailable: %s", release.release_id, why)
        return {**own, "note": f"GitHub compare unavailable: {why}"}
    return {"commits": listed, "total": total if isinstance(total, int) else len(commits),
            "compare_url": html_url if html_url.startswith("https://") else str(own.get("compare_url") or ""),
            "before": base[:40], "source": "github compare"}
