"""Per-stage duration medians in the application's record ``apps/{app}`` (the ETA's history).

Written once per succeeded release by the dispatcher (command RecordDurations), with
the same conditional write as the locks; read by relctl and the dashboard.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.app.ports import AppRecords
from shared.domain.errors import StaleWrite, TransientError
from shared.domain.progress import add_durations

MAX_CONFLICT_RETRIES = 10


def record_durations(records: AppRecords, app: str, release_id: str, durations: Mapping[str, float]) -> None:
    for _ in range(MAX_CONFLICT_RETRIES):
        data, token = records.read(app)
        medians = add_durations(data.get("stage_medians") or {}, release_id, durations)
        if medians == (data.get("stage_medians") or {}):
            return  # counted already (a repeated batch)
        data["stage_medians"] = medians
        try:
            records.write(app, data, token)
            return
        except StaleWrite:
            continue  # a lock changed meanwhile: read again
    raise TransientError(f"stage medians of {app}: too many concurrent updates", release_id=release_id)


def app_record(records: AppRecords | None, app: str) -> dict[str, Any]:
    """The application's record for the views: medians to estimate with, the freeze ({} without a reader)."""
    if records is None:
        return {}
    data, _ = records.read(app)
    return data
