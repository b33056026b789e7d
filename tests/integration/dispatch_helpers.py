"""A dispatcher over the real Firestore emulator with fake executors and notifiers."""
from __future__ import annotations

import json
from dataclasses import dataclass

from google.cloud import firestore

from shared.app.config import Settings
from shared.testing.fakes import (
    FakeApprovals,
    FakeClock,
    FakeExecutor,
    FakeNotifier,
    FakeOperatorRequests,
    FakePublisher,
    rig_keyring,
    signed_bytes,
    signing,
)
from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
from shared.adapters.firestore_store import FirestoreStore
from shared.app.dead_letters import DeadLetters
from shared.adapters.firestore_apps import FirestoreAppRecords, service_lock_records
from shared.app.locks import EnvironmentLocks
from shared.domain.pipeline import StageKind
from shared.adapters.cloud_build_notification import decode_message
from shared.app.dispatcher import Dispatcher
from shared.domain.state import new_release
from tests.unit.gate_helpers import PIPELINE, PUSHER


@dataclass
class Rig:
    dispatcher: Dispatcher
    store: FirestoreStore
    executor: FakeExecutor
    publisher: FakePublisher  # behind the signer, as the functions publish
    clock: FakeClock
    operator_requests: FakeOperatorRequests
    dead_letters: DeadLetters
    delivered: int = 0

    def new_release(self, commit="abcdef1234567890", *, pipeline=PIPELINE, version="1.2.3", repo="acme/app"):
        state = new_release(pipeline, repo=repo, ref="refs/heads/main", commit=commit,
                            version=version, pushed_by=PUSHER, now=self.clock.now())
        self.store.save_pipeline(pipeline)
        assert self.store.create(state)
        return state.release_id

    def send(self, event_id, data, *, sign=True):
        """Deliver ``data`` as the events topic would; a stage.finished is signed as our functions
        sign it unless ``sign=False`` (a forgery by someone else who may publish)."""
        raw = signed_bytes(data) if sign and data.get("type") == "stage.finished" else json.dumps(data).encode()
        decision = self.dispatcher.handle_message(event_id, {}, raw)
        self.deliver_lock_events()
        return decision

    def deliver_lock_events(self):
        """Feed lock grants and supersessions back, as the push subscription would."""
        while self.delivered < len(self.publisher.messages):
            _, data, _ = self.publisher.messages[self.delivered]
            self.delivered += 1
            if data.get("type") in ("lock.granted", "release.superseded"):
                self.dispatcher.handle_message(f"lock-{self.delivered}", {}, json.dumps(data).encode())

    def state(self, release_id):
        return self.store.get(release_id)[0]


def make_rig(project, prefix) -> Rig:
    settings = Settings(project=project, collection_prefix=prefix)
    store = FirestoreStore(firestore.Client(project=project), settings)
    executor = FakeExecutor()
    publisher = signing(FakePublisher())
    clock = FakeClock()
    executors = {kind.value: executor for kind in StageKind}
    locks = EnvironmentLocks(FirestoreAppRecords(store.client, settings), publisher, settings,
                             service_lock_records(store.client, settings))
    rolled_back: list[str] = []
    requests = FakeOperatorRequests()
    letters = FirestoreDeadLetters(store.client, settings)
    dispatcher = Dispatcher(store, publisher, executors, FakeApprovals(), FakeNotifier(), clock, settings, locks,
                            letters, roll_back=lambda service, to=None: rolled_back.append(service) or {"service": service, "revision": to},
                            operator_requests=requests, completion_keys=rig_keyring(), decode=decode_message)
    return Rig(dispatcher, store, executor, publisher, clock, requests,
               DeadLetters(letters, publisher, clock, settings, decode_message))
