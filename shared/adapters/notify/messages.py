"""The words of every notification: which release, which stage, and what to do next."""
from __future__ import annotations

from shared.domain.commands import NoticeKind, Notify
from shared.app.approvals import format_approval_link  # noqa: F401 - the link mail, beside the other messages
from shared.domain.state import ReleaseState

NEXT_STEP = {
    NoticeKind.STAGE_FAILED: (
        "Next: read the stage's log, fix the cause, then run:\n"
        "  relctl replay {release} {stage} --reason \"what was fixed\""
    ),
    NoticeKind.APPROVAL_NEEDED: (
        "Next: an approver opens the personal link sent by mail, checks the staging results "
        "and presses Approve or Reject (the link is valid once), or runs:\n"
        "  relctl approve {release}    or    relctl reject {release} --reason \"why\""
    ),
    NoticeKind.RELEASE_FINISHED: "Nothing left to do: the release is complete.",
    NoticeKind.REFUSED: "Next: read the reason above; fix it and send the request again.",
    NoticeKind.SUPERSEDED: "Nothing to do: the newer release carries these changes; this one is not replayed.",
    NoticeKind.ROLLED_BACK: (
        "Next: check that the service answers as it should, then fix the cause in a new release:\n"
        "  relctl show {release}"
    ),
    NoticeKind.STALLED: (
        "Next: see what the stage waits for (its log, the lock queue, a freeze), then let it go on\n"
        "or stop it for good (locks given back, prod keeps what served before):\n"
        "  relctl show {release}\n"
        "  relctl cancel {release} --reason \"stalled at {stage}\""
    ),
}
SUBJECT = {
    NoticeKind.STAGE_FAILED: "Release {release} stopped at stage {stage}",
    NoticeKind.APPROVAL_NEEDED: "Release {release} needs approval",
    NoticeKind.RELEASE_FINISHED: "Release {release} is complete",
    NoticeKind.REFUSED: "Release {release}: request refused",
    NoticeKind.SUPERSEDED: "Release {release} superseded",
    NoticeKind.ROLLED_BACK: "Release {release}: rolled back by hand",
    NoticeKind.STALLED: "Release {release} has not moved at stage {stage}",
}


def format_notice(release: ReleaseState, notice: Notify, dashboard_url: str = "") -> tuple[str, str]:
    """(subject, plain text) for a ``Notify`` command."""
    names = {"release": release.release_id, "stage": notice.stage or "-"}
    subject = SUBJECT[notice.kind].format(**names) + f" ({release.tag})"
    lines = [
        notice.message,
        "",
        f"Release: {release.release_id}",
        f"Version: {release.version} (tag {release.tag}, commit {release.commit[:12]})",
        f"Stage:   {notice.stage or '-'}",
        "",
        NEXT_STEP[notice.kind].format(**names),
    ]
    if dashboard_url:
        lines.append(f"Dashboard: {dashboard_url.rstrip('/')}/release/{release.release_id}")  # shared/ui/dashboard.py route
    return subject, "\n".join(lines)
