"""Per-stage duration medians in the application's record ``apps/{app}`` (the ETA's history).

Written once per succeeded release by the dispatcher (command RecordDurations), with
the same conditional write as the locks; read by relctl and the dashboard.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from shared.app.ports import AppRecords
from shared.domain.app_record import AppRecord
from shared.domain.errors import StaleWrite, TransientError
from shared.domain.progress import add_durations

MAX_CONFLICT_RETRIES = 10


def record_durations(records: AppRecords, app: str, release_id: str, durations: Mapping[str, float]) -> None:
    for _ in range(MAX_CONFLICT_RETRIES):
        record, token = records.read(app)
        medians = add_durations(record.stage_medians, release_id, durations)
        if medians == record.stage_medians:
            return  # counted already (a repeated batch)
        try:
            records.write(app, replace(record, stage_medians=medians), token)
            return
        except StaleWrite:
            continue  # a lock changed meanwhile: read again
    raise TransientError(f"stage medians of {app}: too many concurrent updates", release_id=release_id)


def prod_runs_text(records: AppRecords, app: str) -> str:
    """What entered prod last (the version floor of ``apps/{app}``), for the approval page."""
    floor = app_record(records, app).version_floor
    if not floor.version:
        return "nothing released to prod yet"
    return f"version {floor.version} (release {floor.release_id or '?'})"


def app_record(records: AppRecords | None, app: str) -> AppRecord:
    """The application's record for the views: medians to estimate with, the freeze (empty without a reader)."""
    if records is None:
        return AppRecord()
    record, _ = records.read(app)
    return record
