"""Issue 22 end to end: every stage runs the image its release built.

Two commits of this repository (tests/sample_commits.py): OLD lacks the sample app's newest
migration, NEW carries it. OLD is released to its approval, then NEW through prod; then
OLD's staging migrate is replayed. The sample app's migrate records which release's code
applied what (sample_app/migrate.py), so the data shows which image each job ran.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from local.demo import LINK, send_push, service_url
from local.mailbox import Mailbox
from local.stack import PROJECT, REGION, LocalStack
from local.traffic import TrafficSampler
from shared.adapters.executors.traffic import release_labels
from shared.adapters.firestore_store import FirestoreStore
from shared.app.config import Settings
from shared.domain.state import ReleaseStatus, StageStatus
from tests.sample_commits import two_commits

pytestmark = pytest.mark.emulators
REGISTRY = f"{REGION}-docker.pkg.dev/{PROJECT}/sample"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
MIGRATION = "0001_feature_flags.sql"
# Its own collections: the session's other stacks release the same app (version floor, release lists).
PREFIX = "images-e2e-"
RELCTL = Path(sys.executable).parent / "relctl"


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    source = two_commits(tmp_path_factory.mktemp("source") / "repo")
    with Mailbox() as mailbox, LocalStack(workdir=tmp_path_factory.mktemp("stack"), smtp_port=mailbox.port,
                                          source_url=source["url"], collection_prefix=PREFIX,
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        running.mailbox = mailbox
        running.source = source
        yield running


def wait_for(store, release_id, condition, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = store.get(release_id)[0]
        if condition(state):
            return state
        assert state.status is not ReleaseStatus.STOPPED, f"{release_id}: {state.reason}"
        time.sleep(0.3)
    raise AssertionError(f"timed out; release {release_id} is {store.get(release_id)[0].status}")


def push(stack, commit: str) -> dict:
    """The push webhook; on busy cores a cold on_push may answer after send_push's 10 s, so a
    timed-out push is sent again (the same commit answers "exists" with the same release)."""
    for _ in range(5):
        try:
            return send_push(stack, commit)
        except (TimeoutError, urllib.error.URLError):
            time.sleep(2)
    return send_push(stack, commit)


def query(stack, environment: str, sql: str) -> list[tuple]:
    with sqlite3.connect(stack.workdir / "data" / environment / "app.sqlite3") as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # no such table: nothing of it ran there yet
            return []


def image_of(state) -> str:
    return f"{REGISTRY}/sample-app@{state.stages['build'].result['digest']}"


def approve(stack, release_id: str) -> None:
    """POST the decision through the link mailed for ``release_id`` (sent just after the state write)."""
    deadline = time.monotonic() + 30
    while not (bodies := [b for b in stack.mailbox.bodies_for("approver@example.com") if release_id in b]):
        assert time.monotonic() < deadline, f"no approval mail for {release_id}"
        time.sleep(0.2)
    link = LINK.search(bodies[-1]).group(1)
    token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["token"][0]
    post = urllib.request.Request(link.split("?")[0], method="POST", data=urllib.parse.urlencode(
        {"token": token, "decision": "approve", "reason": "issue 22 e2e"}).encode())
    with urllib.request.urlopen(post, timeout=10) as answer:
        assert answer.status == 200


def cloud_run_images(stack) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Read back through the Cloud Run clients: images of executions by RELEASE_ID, of revisions by commit."""
    from shared.adapters import gcp_clients

    saved = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    runtime = stack.deploy_config().runtime_sa  # the functions' account: it may read jobs and revisions
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(stack.workdir / "keys" / f"{runtime}.json")
    try:
        settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=stack.standin_endpoint)
        executions, revisions = {}, {}
        for job in ("sample-migrate-staging", "sample-ingestion-smoke", "sample-migrate-prod"):
            for execution in gcp_clients.run_executions(settings).list_executions(parent=f"{PARENT}/jobs/{job}"):
                env = {e.name: e.value for e in execution.template.containers[0].env}
                executions.setdefault(env["RELEASE_ID"], set()).add(execution.template.containers[0].image)
        for service in ("sample-web-staging", "sample-web"):
            for revision in gcp_clients.run_revisions(settings).list_revisions(parent=f"{PARENT}/services/{service}"):
                revisions.setdefault(revision.labels.get("commit", ""), set()).add(revision.containers[0].image)
        return executions, revisions
    finally:
        if saved is None:
            os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        else:
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = saved


def test_each_stage_runs_its_release_image_and_a_replay_runs_the_older_one(stack):
    from google.cloud import firestore

    from shared.ui.notes import load_release, render

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT, collection_prefix=PREFIX))
    old_answer = push(stack, stack.source["old"])
    old = wait_for(store, old_answer["release_id"], lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    assert query(stack, "staging", f"SELECT carried FROM migrate_runs WHERE release_id = '{old.release_id}'") == [("",)]
    assert query(stack, "staging", "SELECT name FROM schema_migrations") == []

    new_answer = push(stack, stack.source["new"])
    new = wait_for(store, new_answer["release_id"], lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    applied = query(stack, "staging", "SELECT release_id, applied_at, name FROM schema_migrations")
    ran = query(stack, "staging", f"SELECT carried FROM migrate_runs WHERE release_id = '{new.release_id}'")
    assert [row[0] for row in applied] == [new.release_id], (
        f"NEW's staging migrate did not apply {MIGRATION}, which NEW carries: its run carried {ran}")
    assert new.stages["staging-migrate"].started_at <= applied[0][1] <= new.stages["staging-deploy"].started_at
    assert image_of(new) != image_of(old)
    assert old.stages["staging-migrate"].result["image"] == image_of(old)
    assert new.stages["staging-migrate"].result["image"] == image_of(new)

    with TrafficSampler(service_url(stack, "sample-web")):  # the prod bake judges real traffic
        approve(stack, new.release_id)
        new = wait_for(store, new.release_id, lambda s: s.status is ReleaseStatus.SUCCEEDED and not s.outbox)
    [(release, applied_at)] = query(stack, "prod", "SELECT release_id, applied_at FROM schema_migrations")
    assert release == new.release_id
    assert new.stages["prod-migrate"].started_at <= applied_at <= new.stages["prod-deploy"].started_at
    assert new.stages["prod-migrate"].result["image"] == image_of(new)
    assert {t["service"] for t in new.stages["prod-deploy"].result["revisions"]} == {"sample-web"}
    assert new.stages["prod-deploy"].result["image"] == image_of(new)

    # The replay of OLD's staging migrate runs OLD's image, though the job now names NEW's.
    env = {**os.environ, **stack.function_env(), **stack.operator_env()}
    replay = subprocess.run([str(RELCTL), "replay", old.release_id, "staging-migrate", "--reason", "issue 22"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    replayed = wait_for(store, old.release_id, lambda s: s.stages["staging-migrate"].attempt == 2
                        and s.stages["staging-migrate"].status is StageStatus.SUCCEEDED)
    assert replayed.stages["staging-migrate"].result["image"] == image_of(old)
    runs = query(stack, "staging", f"SELECT carried, applied FROM migrate_runs WHERE release_id = '{old.release_id}'")
    assert runs == [("", ""), ("", "")], "both runs of OLD ran OLD's code, which carries no migration"
    assert query(stack, "staging", "SELECT release_id FROM schema_migrations") == [(new.release_id,)]

    executions, revisions = cloud_run_images(stack)
    assert executions[new.release_id] == {image_of(new)}
    assert executions[old.release_id] == {image_of(old)}
    assert revisions[release_labels(new.version, new.commit)["commit"]] == {image_of(new)}
    assert revisions[release_labels(old.version, old.commit)["commit"]] == {image_of(old)}

    notes = render(*load_release(store, new.release_id))
    assert "## Images" in notes and re.search(rf"Prod migrate \| succeeded \| `{re.escape(image_of(new))}`", notes)
