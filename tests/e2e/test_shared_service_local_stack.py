"""Two applications that deploy the same Cloud Run service, on the local stack.

"shop" and "shop-admin" (pipelines/sample.yaml under two names, released by two repositories,
none of which another test pushes on the shared emulators) both deploy `sample-web-staging`. Pushed at the same moment,
each goes through its own application's lock, and they take turns on the shared service:
their staging stages never overlap, and neither supersedes the other."""
from __future__ import annotations


import pytest

from local.demo import commit_sha, send_push
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from shared.adapters.firestore_store import FirestoreStore
from shared.app.config import REPO_ROOT, Settings
from tests.waits import wait_for_releases
from shared.domain.state import ReleaseStatus

pytestmark = pytest.mark.emulators
APPS = ("shop", "shop-admin")
STAGING = ("staging-migrate", "staging-deploy", "ingestion-smoke", "staging-smoke")


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shared-service")
    files = []
    for app in APPS:
        files.append(workdir / f"{app}.yaml")
        files[-1].write_text((REPO_ROOT / "pipelines" / "sample.yaml").read_text()
                             .replace("name: sample-app", f"name: {app}")
                             .replace("repositories: [example/sample-app]", f"repositories: [example/{app}]"))
    with Mailbox() as mailbox, LocalStack(workdir=workdir / "stack", smtp_port=mailbox.port, pipeline_file=files[0],
                                          pipeline_files=tuple(files[1:]),
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        yield running


def test_two_applications_sharing_a_service_take_turns_on_it(stack):
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    commit = commit_sha()
    answers = [send_push(stack, commit, f"example/{app}") for app in APPS]
    assert [a["status"] for a in answers] == ["created", "created"]
    ids = [a["release_id"] for a in answers]
    states = wait_for_releases(store, ids, lambda states: all(s.status is ReleaseStatus.AWAITING_APPROVAL for s in states),
                               "both releases at the approval")
    assert {s.pipeline_name for s in states} == set(APPS)
    windows = sorted((s.stages[STAGING[0]].started_at, s.stages[STAGING[-1]].finished_at) for s in states)
    (_, first_end), (second_start, _) = windows
    assert first_end <= second_start, f"both changed sample-web-staging at once: {windows}"
