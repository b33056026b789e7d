"""Two applications that deploy the same Cloud Run service, on the local stack.

"sample-app" (pipelines/sample.yaml) and "sample-admin" (the same file under another name,
released by another repository) both deploy `sample-web-staging`. Pushed at the same moment,
each goes through its own application's lock, and they take turns on the shared service:
their staging stages never overlap, and neither supersedes the other."""
from __future__ import annotations

import time

import pytest

from local.demo import commit_sha, send_push
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from shared.adapters.firestore_store import FirestoreStore
from shared.app.config import REPO_ROOT, Settings
from shared.domain.state import ReleaseStatus

pytestmark = pytest.mark.emulators
STAGING = ("staging-migrate", "staging-deploy", "ingestion-smoke", "staging-smoke")


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shared-service")
    admin = workdir / "sample-admin.yaml"
    admin.write_text((REPO_ROOT / "pipelines" / "sample.yaml").read_text()
                     .replace("name: sample-app", "name: sample-admin")
                     .replace("repositories: [example/sample-app]", "repositories: [example/sample-admin]"))
    with Mailbox() as mailbox, LocalStack(workdir=workdir / "stack", smtp_port=mailbox.port, pipeline_files=(admin,),
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        yield running


def test_two_applications_sharing_a_service_take_turns_on_it(stack):
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    commit = commit_sha()
    ids = [send_push(stack, commit, repo)["release_id"] for repo in ("example/sample-app", "example/sample-admin")]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        states = [store.get(rid)[0] for rid in ids]
        assert not any(s.status in (ReleaseStatus.STOPPED, ReleaseStatus.SUPERSEDED) for s in states), \
            [(s.release_id, s.status, s.reason) for s in states]
        if all(s.status is ReleaseStatus.AWAITING_APPROVAL for s in states):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"not both at the approval: {[s.status for s in states]}")
    assert {s.pipeline_name for s in states} == {"sample-app", "sample-admin"}
    windows = sorted((s.stages[STAGING[0]].started_at, s.stages[STAGING[-1]].finished_at) for s in states)
    (_, first_end), (second_start, _) = windows
    assert first_end <= second_start, f"both changed sample-web-staging at once: {windows}"
