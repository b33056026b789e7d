"""The per-application record: what earlier versions stored still reads, and a record written reads back whole."""
from __future__ import annotations

from shared.adapters.app_record_doc import decode_app_record, encode_app_record
from shared.domain.app_record import (AppRecord, EnvironmentLock, Freeze, QueuedRelease, SUPERSEDED_KEPT,
                                      Supersession, VersionFloor)

# As shared/app/locks.py wrote it before the record had types: a lock without "services", a queued
# release without "version", no "freeze" key at all.
OLD_DOCUMENT = {
    "locks": {"staging": {"holder": "r-3", "queue": [{"release_id": "r-4", "created_at": 1700000000.5}],
                          "superseded": {"r-2": {"by": "r-3", "reason": ""}}}},
    "version_floor": {"version": "1.2.3", "release_id": "r-1"},
    "stage_medians": {"lint": {"recent": [10.0], "median_s": 10.0}, "_counted": ["r-1"]},
}


def test_a_document_written_before_the_types_reads():
    record = decode_app_record(OLD_DOCUMENT)
    assert record.lock("staging") == EnvironmentLock("r-3", (), (QueuedRelease("r-4", 1700000000.5),),
                                                     {"r-2": Supersession("r-3", "")})
    assert record.version_floor == VersionFloor("1.2.3", "r-1")
    assert record.freeze is None and not record.frozen("prod")
    assert record.stage_medians["lint"]["median_s"] == 10.0
    assert record.lock("prod") == EnvironmentLock(), "an environment never locked reads as a free lock"


def test_never_written_and_lifted_freeze_read_as_empty():
    assert decode_app_record(None) == AppRecord()
    assert decode_app_record({**OLD_DOCUMENT, "freeze": {}}).freeze is None


def test_a_record_reads_back_as_written():
    record = AppRecord({"prod": EnvironmentLock("r-9", ("web", "api"), (QueuedRelease("r-10", 5.0, "2.0.0", ("web",)),),
                                                {"r-8": Supersession("r-9", "version 1 is not higher")})},
                       VersionFloor("2.0.0", "r-9"), Freeze("ops@example.com", 7.0, "quarter close"),
                       {"deploy": {"recent": [3.0], "median_s": 3.0}})
    assert decode_app_record(encode_app_record(record)) == record
    assert record.frozen("prod") and not record.frozen("staging")


def test_a_lock_remembers_the_newest_supersessions_and_keeps_an_entrys_place():
    lock = EnvironmentLock()
    for n in range(SUPERSEDED_KEPT + 5):
        lock = lock.supersede(f"r-{n}", Supersession("new", ""))
    assert len(lock.superseded) == SUPERSEDED_KEPT and "r-4" not in lock.superseded and "r-5" in lock.superseded
    again = lock.supersede("r-5", Supersession("newer", ""))
    assert list(again.superseded)[0] == "r-5" and again.superseded["r-5"].by == "newer"


def test_the_freeze_history_reads_back_as_written_and_old_documents_have_none():
    from shared.domain.app_record import FreezeChange

    record = AppRecord(freeze=Freeze("ops@example.com", 7.0, "quarter close"), freeze_history=(
        FreezeChange("freeze", "ops@example.com", 7.0, "quarter close"), FreezeChange("unfreeze", "lead@example.com", 9.0, "")))
    assert decode_app_record(encode_app_record(record)) == record
    assert decode_app_record({"freeze": {"by": "a", "at": 1.0, "reason": "r"}}).freeze_history == ()
    garbled = decode_app_record({"freeze_history": ["x", {"action": "freeze", "by": "a", "at": "soon"}]})
    assert garbled.freeze_history == (FreezeChange("freeze", "a", None, ""),)  # a wrong type reads as absent
