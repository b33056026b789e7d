"""Session fixtures: the Firestore and Pub/Sub emulators, started once for the whole run.

Each test that touches them gets its own collection prefix or topic names, so tests
never see each other's data and need no cleanup between them.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from local.emulators import start_emulator

PROJECT = "test-project"
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
# `make test` runs the files on several pytest-xdist workers, each with its own emulators: each
# worker writes its logs to its own folder so that no two processes append to one file.
LOGS = OUTPUT / "logs" / os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(scope="session")
def emulators():
    """Start both emulators; set FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST for the session."""
    started = []
    try:
        firestore = start_emulator("firestore", PROJECT, LOGS)
        started.append(firestore)
        pubsub = start_emulator("pubsub", PROJECT, LOGS)
        started.append(pubsub)
        saved = {k: os.environ.get(k) for k in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
        os.environ["FIRESTORE_EMULATOR_HOST"] = firestore.host
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub.host
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        yield {"firestore": firestore.host, "pubsub": pubsub.host, "project": PROJECT}
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finally:
        for emulator in started:
            emulator.stop()


@pytest.fixture
def firestore_client(emulators):
    from google.cloud import firestore

    return firestore.Client(project=PROJECT)


@pytest.fixture
def unique_prefix() -> str:
    """A collection prefix / name suffix that no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}_"
