"""An approval request as stored, one per personal link (``approvals/{nonce}``).

Consumed exactly once: the decision (who, when, what, why, user agent) and the
"used" mark are one write. The store port is ``shared/app/ports.py`` (ApprovalStore);
the Firestore adapter is ``shared/adapters/firestore_approvals.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.domain.errors import PipelineError


class ApprovalNotFound(PipelineError):
    """No approval request exists for this nonce."""


@dataclass(frozen=True)
class ApprovalRecord:
    nonce: str
    release_id: str
    stage: str
    attempt: int
    approver: str
    expires_at: float
    tag: str
    created_at: float
    consumed_at: float | None = None
    decision: str = ""  # "approved" | "rejected" once consumed
    reason: str = ""
    user_agent: str = ""
    message_id: str = ""  # the published event, once delivered
    digest: str = ""  # the image digest the link approves

    @property
    def consumed(self) -> bool:
        return self.consumed_at is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("nonce")
        return data

    @classmethod
    def from_dict(cls, nonce: str, data: dict[str, Any]) -> "ApprovalRecord":
        known = set(cls.__dataclass_fields__) - {"nonce"}
        return cls(nonce=nonce, **{k: v for k, v in data.items() if k in known})


def decision_fields(decision: str, reason: str, user_agent: str, now: float) -> dict[str, Any]:
    if decision not in ("approved", "rejected"):
        raise ValueError(f"decision must be approved or rejected, not {decision!r}")
    return {"consumed_at": now, "decision": decision, "reason": reason, "user_agent": user_agent}


