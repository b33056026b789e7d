"""What the fault tests share: a real Dispatcher over a Firestore emulator, a small build-only
pipeline, and executors that count what they start.

The dispatcher is built the same way in the test process and in the crashing runner
subprocess (tests/faults/dispatcher_runner.py), so a redelivery meets the same code.
"""
from __future__ import annotations

import json
import time
import uuid

from shared.app.config import Settings
from shared.testing.fakes import FakeApprovals, FakeNotifier, FakePublisher, rig_keyring, signed_bytes, signing
from shared.domain.pipeline import parse_pipeline
from shared.domain.state import new_release

PIPELINE = parse_pipeline({
    "name": "faults",
    "stages": [
        {"id": f"s{i}", "kind": "build", "timeout": "10m", "params": {"steps": [{"name": "bench/instant"}]}}
        for i in (1, 2, 3)
    ],
})
STAGES = [s.id for s in PIPELINE.stages]


def settings_for(project: str, prefix: str, endpoint: str = "") -> Settings:
    return Settings(project=project, collection_prefix=prefix, cloud_build_endpoint=endpoint,
                    artifact_registry="local")


def firestore_store(project: str, settings: Settings):
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore

    return FirestoreStore(firestore.Client(project=project), settings)


def dispatcher(store, executors, settings, clock=None, publisher=None):
    """The real Dispatcher, with environment locks over Firestore (no stage here names an
    environment, so none is taken) and a roll-back no check here ever asks for."""
    from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
    from shared.app.locks import EnvironmentLocks
    from shared.app.ports import SystemClock
    from shared.adapters.cloud_build_notification import decode_message
    from shared.app.dispatcher import Dispatcher

    publisher = signing(publisher if publisher is not None else FakePublisher())
    locks = EnvironmentLocks(FirestoreAppRecords(store.client, settings), publisher, settings,
                             service_lock_records(store.client, settings))
    return Dispatcher(store, publisher, executors, FakeApprovals(), FakeNotifier(), clock or SystemClock(),
                      settings, locks, FirestoreDeadLetters(store.client, settings), roll_back=_no_roll_back,
                      completion_keys=rig_keyring(), decode=decode_message)


def _no_roll_back(service: str, to: str | None = None):
    raise AssertionError(f"the fault pipeline has no check stage; nothing should roll {service} back")


def build_executor(settings: Settings):
    from shared.adapters.executors import RetryPolicy, build_executors

    return build_executors(settings, retry=RetryPolicy(initial_s=0.02, maximum_s=0.1, timeout_s=1))["build"]


def create_release(store) -> str:
    state = new_release(PIPELINE, repo="faults/app", ref="refs/heads/main",
                        commit=uuid.uuid4().hex + "0" * 8, version="1.0.0",
                        pushed_by="dev@example.com", now=time.time())
    store.save_pipeline(PIPELINE)
    assert store.create(state)
    return state.release_id


def started(release_id: str) -> bytes:
    return json.dumps({"type": "release.started", "release_id": release_id}).encode()


def finished(release_id: str, stage: str, attempt: int = 1, outcome: str = "succeeded") -> bytes:
    return signed_bytes({"type": "stage.finished", "release_id": release_id, "stage": stage,
                         "stage_run_id": f"{release_id}.{stage}.a{attempt}", "outcome": outcome,
                         "result": {"from": "completion"}})


def builds_for(standin, stage_run_id: str) -> list:
    return [b for b in standin.builds if f"run-{stage_run_id}" in b.tags]
