"""Fault 4: the Firestore emulator is restarted in the middle of a release, against persisted state."""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from local.emulators import Emulator, free_port, start_emulator
from shared.domain.gate import GateOutcome
from shared.domain.state import ReleaseStatus, StageStatus
from tests.conftest import LOGS
from shared.testing.fakes import FakeExecutor
from tests.faults import rig

pytestmark = pytest.mark.emulators


def start_firestore(port: int, export_dir: Path, log_dir: Path) -> Emulator:
    """Start the emulator on ``port``, importing the latest export in ``export_dir`` if any."""
    metadata = sorted(export_dir.glob("*/*.overall_export_metadata"))
    extra = (f"--import-data={metadata[-1]}",) if metadata else ()
    return start_emulator("firestore", "unused", log_dir, port=port, extra_args=extra)


def export(host: str, project: str, export_dir: Path) -> None:
    """Persist the emulator's data through its export endpoint. (--export-on-exit does not
    export when the emulator is stopped with SIGTERM or SIGINT: checked with this gcloud.)"""
    export_dir.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"database": f"projects/{project}/databases/(default)", "export_directory": str(export_dir)})
    request = urllib.request.Request(f"http://{host}/emulator/v1/projects/{project}:export", data=body.encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    assert sorted(export_dir.glob("*/*.overall_export_metadata")), "the emulator exported nothing"


@pytest.fixture
def own_firestore(emulators, tmp_path, monkeypatch):
    """A Firestore emulator of this test's own (the session's one must not be restarted)."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    log_dir = LOGS / "firestore-restart"
    export_dir = tmp_path / "export"
    box = {"emulator": start_firestore(port, export_dir, log_dir)}
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)  # the clients below talk to this one

    def restart_later(down_s: float) -> threading.Thread:
        export(host, emulators["project"], export_dir)
        box["emulator"].stop()

        def up() -> None:
            time.sleep(down_s)
            box["emulator"] = start_firestore(port, export_dir, log_dir)

        thread = threading.Thread(target=up)
        thread.start()
        return thread

    yield restart_later
    box["emulator"].stop()


def test_firestore_restart_mid_release_loses_nothing_and_the_release_ends(emulators, unique_prefix, own_firestore):
    """Fault: after s1 succeeded and s2 started, the Firestore emulator's data is exported, the
    emulator stops and comes back 3 s later from that export (every document's update time
    changes on import, so any version token read before is stale afterwards). s2's
    completion arrives while it is down.
    Expected: the handler does not acknowledge an event it could not apply - either the
    client's own retry of UNAVAILABLE carries it over the outage, or it raises and the
    event is delivered again after the restart; the persisted state (s1 succeeded, s2
    running, applied events) survives; the completion is applied exactly once, s3 starts
    once, and the release ends SUCCEEDED with every stage started exactly once."""
    project = emulators["project"]
    settings = rig.settings_for(project, unique_prefix)
    store = rig.firestore_store(project, settings)
    executor = FakeExecutor()
    dispatcher = rig.dispatcher(store, {"build": executor}, settings)
    rid = rig.create_release(store)
    dispatcher.handle_message(f"{rid}-start", {}, rig.started(rid))
    dispatcher.handle_message(f"{rid}-s1", {}, rig.finished(rid, "s1"))
    before = store.get(rid)[0]
    assert before.stages["s2"].status is StageStatus.RUNNING

    coming_back = own_firestore(down_s=3.0)
    t0 = time.monotonic()
    try:
        outcome = dispatcher.handle_message(f"{rid}-s2", {}, rig.finished(rid, "s2")).outcome
        print(f"the client's retry carried the event over the outage ({time.monotonic() - t0:.1f} s)")
    except Exception as exc:  # noqa: BLE001 - not acknowledged: Pub/Sub delivers it again
        print(f"raised {type(exc).__name__} after {time.monotonic() - t0:.1f} s; delivered again")
        coming_back.join(120)
        outcome = dispatcher.handle_message(f"{rid}-s2", {}, rig.finished(rid, "s2")).outcome
    coming_back.join(120)
    assert outcome is GateOutcome.APPLIED

    restored = store.get(rid)[0]
    assert restored.stages["s1"].status is StageStatus.SUCCEEDED
    assert restored.stages["s1"].finished_at == before.stages["s1"].finished_at
    assert restored.applied_events[: len(before.applied_events)] == before.applied_events
    assert restored.stages["s2"].status is StageStatus.SUCCEEDED and restored.stages["s3"].status is StageStatus.RUNNING
    assert dispatcher.handle_message(f"{rid}-s2", {}, rig.finished(rid, "s2")).outcome is GateOutcome.DUPLICATE

    assert dispatcher.handle_message(f"{rid}-s3", {}, rig.finished(rid, "s3")).outcome is GateOutcome.APPLIED
    final = store.get(rid)[0]
    assert final.status is ReleaseStatus.SUCCEEDED and final.outbox == []
    assert executor.starts == {f"{rid}.{s}.a1": 1 for s in rig.STAGES}
    assert os.environ["FIRESTORE_EMULATOR_HOST"] != emulators["firestore"]
