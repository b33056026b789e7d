"""Three "Why" bullets of issue 11 reproduced through the deployed entry points, on the emulators.

A release is made the way production makes it: a signed GitHub push to the ``on_push``
function (functions-framework, Firestore and Pub/Sub emulators). The dispatcher rig then
reads that same release from Firestore and is fed what a publisher on ``pipeline-events``
would send. ``relctl validate`` runs as a subprocess, as an operator runs it.

- Any publisher could complete a running stage with a forged ``stage.finished`` (``tests: 1000``):
  the stage-run id was derived from repo + commit, so anyone could write it.
- A release pushed as ``Boss@Example.COM`` (or as a GitHub noreply address) was approved by
  ``boss@example.com``: identities were compared as raw strings.
- ``relctl validate`` accepted a pipeline whose approval comes last, or that has none.
"""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from functions_framework import create_app
from google.cloud import pubsub_v1

from shared import bootstrap
from shared.app.config import REPO_ROOT
from shared.app.push import signature_for
from shared.domain.gate import GateOutcome
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig
from tests.unit.gate_helpers import APPROVER, DOC

pytestmark = pytest.mark.emulators
SECRET = "test-webhook-secret"


@pytest.fixture
def local(emulators, unique_prefix, monkeypatch, tmp_path):
    """push(email, name): a signed push through on_push, answering the release id; rig: the dispatcher."""
    pipeline_file = tmp_path / "mini.yaml"
    pipeline_file.write_text(json.dumps({**DOC, "repositories": ["acme/app"]}))  # JSON is YAML: the gate tests' small pipeline
    topic = f"{unique_prefix}events"
    pubsub_v1.PublisherClient().create_topic(name=f"projects/{emulators['project']}/topics/{topic}")
    for key, value in {"RELEASE_WEBHOOK_SECRET": SECRET, "RELEASE_COLLECTION_PREFIX": unique_prefix,
                       "RELEASE_EVENTS_TOPIC": topic, "RELEASE_PROJECT": emulators["project"],
                       "RELEASE_PIPELINE_FILE": str(pipeline_file)}.items():
        monkeypatch.setenv(key, value)
    bootstrap.reset()
    client = create_app("on_push", "functions/main.py").test_client()

    class Local:
        rig = make_rig(emulators["project"], unique_prefix)

        @staticmethod
        def push(email, name, commit="c" * 40):
            body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"full_name": "acme/app"},
                               "pusher": {"name": name, "email": email},
                               "head_commit": {"message": "Change\n\nRelease-Version: 1.4.0"}}).encode()
            answer = client.post("/", data=body, headers={
                "X-GitHub-Event": "push", "X-GitHub-Delivery": uuid.uuid4().hex, "Content-Type": "application/json",
                "X-Hub-Signature-256": signature_for(SECRET, body)})
            assert answer.status_code == 201, answer.get_data(as_text=True)
            return answer.get_json()["release_id"]

    yield Local
    bootstrap.reset()


def stage_finished(rid, stage, stage_run_id, **extra):
    return {"type": "stage.finished", "release_id": rid, "stage": stage, "stage_run_id": stage_run_id,
            "outcome": "succeeded", **extra}


def test_a_forged_stage_finished_completes_nothing(local):
    rig = local.rig
    rid = local.push("dev@example.com", "dev")
    rig.send("start", {"type": "release.started", "release_id": rid})
    assert rig.state(rid).stages["lint"].status is StageStatus.RUNNING
    forged = rig.send("forged", stage_finished(rid, "lint", f"{rid}.lint.a1", result={"tests": 1000}), sign=False)
    assert forged.outcome is not GateOutcome.APPLIED, forged.reason
    # Even signed (a publisher holding our key), the guessable id is not the running one: its secret is missing.
    guessed = rig.send("guessed", stage_finished(rid, "lint", f"{rid}.lint.a1", result={"tests": 1000}))
    assert guessed.outcome is not GateOutcome.APPLIED, guessed.reason
    state = rig.state(rid)
    assert state.stages["lint"].status is StageStatus.RUNNING and "tests" not in state.stages["lint"].result
    # What the executor reports for the run the orchestrator started still counts.
    real = rig.send("real", stage_finished(rid, "lint", state.stages["lint"].stage_run_id))
    assert real.outcome is GateOutcome.APPLIED and rig.state(rid).stages["unit"].status is StageStatus.RUNNING


def at_approval(rig, rid):
    rig.send("start", {"type": "release.started", "release_id": rid})
    for _ in range(20):
        state = rig.state(rid)
        if state.status is ReleaseStatus.AWAITING_APPROVAL:
            return state
        stage = next(s for s, st in state.stages.items() if st.status is StageStatus.RUNNING)
        rig.send(uuid.uuid4().hex, stage_finished(rid, stage, state.stages[stage].stage_run_id))
    raise AssertionError(f"{rid} never reached its approval: {rig.state(rid).status}")


@pytest.mark.parametrize("email, name, why", [("Boss@Example.COM", "boss", "pushed this commit"),
                                              ("583231+boss-gh@users.noreply.github.com", "boss-gh", "cannot be matched")])
def test_the_pusher_cannot_approve_under_another_spelling(local, email, name, why):
    """boss@example.com is an approver of the pipeline; the push came from them, or cannot be matched."""
    rig = local.rig
    rid = local.push(email, name)
    waiting = at_approval(rig, rid).stages["approval"]
    nonce = uuid.uuid4().hex
    rig.dispatcher.approvals.confirm(nonce)  # the approval page recorded this decision
    decision = rig.send("approve", {"type": "approval.decided", "release_id": rid, "stage": "approval",
                                    "attempt": waiting.attempt, "nonce": nonce, "approver": APPROVER,
                                    "approve": True, "expires_at": waiting.deadline})
    assert decision.outcome is GateOutcome.REFUSED and why in decision.reason, decision.reason
    state = rig.state(rid)
    assert state.status is ReleaseStatus.AWAITING_APPROVAL and state.stages["prod-migrate"].attempt == 0


def relctl_validate(path):
    return subprocess.run([sys.executable, "-m", "shared.ui.cli", "validate", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


@pytest.mark.parametrize("shape", ["approval last", "no approval"])
def test_relctl_validate_refuses_prod_stages_that_can_run_unapproved(tmp_path, shape):
    approval = next(s for s in DOC["stages"] if s["id"] == "approval")
    others = [s for s in DOC["stages"] if s["id"] != "approval"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({**DOC, "repositories": ["acme/app"],
                                "stages": others + ([approval] if shape == "approval last" else [])}))
    answer = relctl_validate(path)
    assert answer.returncode == 2, (answer.returncode, answer.stdout, answer.stderr)
    assert "stage 'prod-migrate'" in answer.stderr and "after a passed approval" in answer.stderr, answer.stderr
    path.write_text(json.dumps({**DOC, "repositories": ["acme/app"]}))  # the same stages in a safe order validate
    assert relctl_validate(path).returncode == 0
