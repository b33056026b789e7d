"""GitHub deployments and commit statuses from whole releases on the local stack, read back from
the GitHub stand-in (local/github_api/standin.py) the stack's functions report to as the App.

Four applications (pipelines/sample.yaml under four names and repositories no other test pushes
on): one release succeeds, one succeeds while GitHub answers 502 and then rate-limits, one is a bad
canary the analysis stops, one is cancelled in staging."""
from __future__ import annotations

import time

import pytest
import yaml

from local.demo import APPROVER, LINK, approve_by_link, commit_sha, send_push
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from shared.adapters.firestore_store import FirestoreStore
from shared.app.config import REPO_ROOT, Settings
from shared.domain.state import ReleaseStatus, StageStatus

pytestmark = pytest.mark.emulators
APPS = ("gh-ok", "gh-faults", "gh-bad", "gh-cancel")
DONE = ["queued", "in_progress", "success"]


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("github")
    files = []
    for app in APPS:
        document = yaml.safe_load((REPO_ROOT / "pipelines" / "sample.yaml").read_text())
        document["name"], document["repositories"] = app, [f"example/{app}"]
        if app == "gh-bad":  # the canary of `make demo --bad-canary`
            deploy = next(s for s in document["stages"] if s["id"] == "prod-deploy")
            deploy["params"]["env"]["CANARY_FAULTS"] = "5xx=0.05,slow=3,error_logs=0.05"
        else:  # the canary analysis is not under test here: its timing on busy cores would only add noise
            smoke = next(s for s in document["stages"] if s["id"] == "prod-smoke")
            smoke["params"].pop("analysis", None)
        files.append(workdir / f"{app}.yaml")
        files[-1].write_text(yaml.safe_dump(document, sort_keys=False))
    with Mailbox() as mailbox, LocalStack(workdir=workdir / "stack", smtp_port=mailbox.port, pipeline_file=files[0],
                                          pipeline_files=tuple(files[1:]), github_app=True,
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        running.mailbox = mailbox
        yield running


@pytest.fixture(scope="module")
def store(stack):
    from google.cloud import firestore

    return FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))


def release(stack, store, app, *, until=lambda s: s.status.terminal, on_waiting=True, timeout_s=300):
    """Push, approve by the mailed link when asked, and wait; returns (final state, seconds)."""
    rid = send_push(stack, commit_sha(), f"example/{app}")["release_id"]
    started, approved = time.monotonic(), False
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        state = store.get(rid)[0]
        if until(state):
            return state, time.monotonic() - started
        assert state.status is not ReleaseStatus.STOPPED, f"{app} stopped: {state.reason}"
        if state.status is ReleaseStatus.AWAITING_APPROVAL and on_waiting and not approved:
            link = _link_for(stack, rid)
            if link:
                approve_by_link(link)
                approved = True
        time.sleep(0.2)
    raise AssertionError(f"{app}: timed out at {store.get(rid)[0].status}")


def _link_for(stack, rid: str) -> str:
    """The newest approval link mailed for release ``rid`` (several releases mail the same approver)."""
    for body in reversed(stack.mailbox.bodies_for(APPROVER)):
        if rid in body:
            found = LINK.search(body)
            if found:
                return found.group(1)
    return ""


def machine_time(state) -> float:
    """The release's duration from its push to its last stage, less the approval's wait for a person
    (the test's own mail polling is not what is compared)."""
    approval = state.stages["approval"]
    waited = (approval.finished_at or 0) - (approval.started_at or approval.finished_at or 0)
    return max(st.finished_at or 0 for st in state.stages.values()) - state.created_at - waited


def wait_github(stack, repo, expected, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack.github.deployment_states(repo) == expected:
            return
        time.sleep(0.5)
    assert stack.github.deployment_states(repo) == expected


def commit_states(stack, repo):
    return [(s["state"], s["context"]) for s in stack.github.commit_statuses.get(repo, [])]


def test_a_release_leaves_two_successful_deployments_then_faults_delay_only_the_reports(stack, store):
    done, _ = release(stack, store, "gh-ok")
    clean_s = machine_time(done)
    assert done.status is ReleaseStatus.SUCCEEDED
    wait_github(stack, "example/gh-ok", {"staging": DONE, "prod": DONE})
    assert commit_states(stack, "example/gh-ok") == [("pending", "release/gh-ok")] * 2 + [("success", "release/gh-ok")]
    assert stack.github.commit_statuses["example/gh-ok"][-1]["description"] == f"{done.tag} serving 100 % in prod"
    prod = stack.github.deployments["example/gh-ok"][1]
    assert prod["sha"] == done.commit and prod["payload"]["release_id"] == done.release_id
    assert prod["statuses"][-1]["log_url"].endswith(f"/release/{done.release_id}")
    assert prod["statuses"][-1]["environment_url"].startswith("http://127.0.0.1:")
    calls = [r for r in stack.github.requests if "/repos/example/gh-ok/" in r[1] and r[0] == "POST"]
    tokens = stack.github.token_requests
    print(f"fault-free release: {clean_s:.1f} s, {len(calls)} GitHub writes, {tokens} installation token(s)")
    # A token per reporting process at most (dispatch, dispatch-builds, and sweep when it retries or
    # resyncs), each reused for all its calls: not one per call.
    assert tokens <= 3 < len(calls)

    stack.github.fail_next(502, 502, 403, 403)
    faulted, _ = release(stack, store, "gh-faults")
    faulted_s = machine_time(faulted)
    assert faulted.status is ReleaseStatus.SUCCEEDED
    print(f"release while GitHub answered 502, 502, 403 (rate limit), 403: {faulted_s:.1f} s "
          f"(fault-free {clean_s:.1f} s)")
    assert faulted_s <= clean_s * 1.10
    wait_github(stack, "example/gh-faults", {"staging": DONE, "prod": DONE})  # in order, once each
    assert [s for s, _ in commit_states(stack, "example/gh-faults")] == ["pending", "pending", "success"]
    assert [r[2] for r in stack.github.requests].count(502) == 2


def test_a_bad_canary_ends_prod_in_failure_with_the_analysis_reason(stack, store):
    stopped, _ = release(stack, store, "gh-bad", until=lambda s: s.status is ReleaseStatus.STOPPED)
    assert stopped.stopped_at_stage == "prod-smoke"
    wait_github(stack, "example/gh-bad", {"staging": DONE, "prod": ["queued", "in_progress", "failure"]})
    reason = stack.github.deployments["example/gh-bad"][1]["statuses"][-1]["description"]
    assert reason.startswith("Smoke prod failed: ") and stopped.stages["prod-smoke"].reason[:60] in reason
    commit = stack.github.commit_statuses["example/gh-bad"][-1]
    assert commit["state"] == "failure" and commit["description"].startswith("Smoke prod: ")
    assert len(reason) <= 140 and len(commit["description"]) <= 140


def test_a_cancelled_release_leaves_nothing_in_progress(stack, store):
    from shared.ui.operator_client import call_operator

    running, _ = release(stack, store, "gh-cancel", on_waiting=False,
                         until=lambda s: s.stages["staging-migrate"].status is not StageStatus.PENDING)
    call_operator(Settings.from_env(stack.operator_env(), project=PROJECT), "cancel",
                  {"release_id": running.release_id, "reason": "wrong branch"}, as_="operator@example.com")
    deadline = time.monotonic() + 60
    while store.get(running.release_id)[0].status is not ReleaseStatus.CANCELLED and time.monotonic() < deadline:
        time.sleep(0.2)
    wait_github(stack, "example/gh-cancel", {"staging": ["queued", "in_progress", "error"]})
    assert commit_states(stack, "example/gh-cancel")[-1] == ("error", "release/gh-cancel")
    assert "in_progress" not in [v[-1] for v in stack.github.deployment_states("example/gh-cancel").values()]
