"""The installed `relctl` command, run as a subprocess against the emulators and the stand-in.

Releases are produced by the dispatcher rig (real Firestore emulator, fake executors);
events relctl publishes are pulled from a real Pub/Sub emulator subscription and fed
to that dispatcher, so a replay is followed from the command line to the gate's answer.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from local.emulators import free_port, wait_port
from local.token_issuer import LocalTokenIssuer
from shared.app.config import REPO_ROOT, Settings
from shared.domain.state import ReleaseStatus, StageStatus
from tests.integration.dispatch_helpers import make_rig
from tests.unit.gate_helpers import APPROVER, STAGES

RELCTL = Path(sys.executable).parent / "relctl"
pytestmark = pytest.mark.emulators


def relctl_env(emulators, prefix, topic, **extra):
    env = dict(os.environ)
    env.update({
        "FIRESTORE_EMULATOR_HOST": emulators["firestore"], "PUBSUB_EMULATOR_HOST": emulators["pubsub"],
        "GOOGLE_CLOUD_PROJECT": emulators["project"], "RELEASE_PROJECT": emulators["project"],
        "RELEASE_COLLECTION_PREFIX": prefix, "RELEASE_EVENTS_TOPIC": topic, "USER": "ops-user",
    })
    env.pop("RELCTL_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def token_issuer():
    issuer = LocalTokenIssuer().start()
    yield issuer
    issuer.stop()


@contextlib.contextmanager
def running_operator_function(emulators, unique_prefix, token_issuer, log, **extra):
    """The operator function in its own functions-framework process, trusting the local token issuer."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    topic_id = f"events-{unique_prefix.strip('_')}"
    env = relctl_env(emulators, unique_prefix, topic_id, PYTHONPATH=str(REPO_ROOT), RELEASE_OPERATOR_AUDIENCE=url,
                     RELEASE_OPERATOR_CERTS_URL=token_issuer.certs_url, RELEASE_OPERATOR_ISSUERS=token_issuer.issuer,
                     RELEASE_OPERATORS="ops-user@example.com,alice@example.com,qa@example.com,boss@example.com,dev@example.com",
                     **extra)
    with log.open("w") as out:
        proc = subprocess.Popen([str(RELCTL.parent / "functions-framework"), "--target", "operator", "--source",
                                 str(REPO_ROOT / "functions" / "main.py"), "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        wait_port("127.0.0.1", port, 60, proc, log)
        yield {"RELEASE_OPERATOR_URL": url, "RELEASE_OPERATOR_TOKEN_URL": token_issuer.token_url,
               "RELEASE_OPERATOR_EMAIL": "ops-user@example.com"}
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def operator_function(emulators, unique_prefix, token_issuer, tmp_path):
    with running_operator_function(emulators, unique_prefix, token_issuer, tmp_path / "operator.log") as env:
        yield env


@pytest.fixture
def cli(emulators, unique_prefix, operator_function):
    """rig: releases in the emulator; run(*args): relctl's (exit code, stdout, stderr); pull(): published events."""
    from google.cloud import pubsub_v1

    assert RELCTL.exists(), f"{RELCTL} missing: run .venv/bin/pip install --no-deps -e ."
    rig = make_rig(emulators["project"], unique_prefix)
    rig.operator_requests = bootstrap_requests(emulators["project"], unique_prefix)
    rig.dispatcher.operator_requests = rig.operator_requests
    topic_id = f"events-{unique_prefix.strip('_')}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(emulators["project"], topic_id)).name
    subscription = subscriber.create_subscription(
        name=subscriber.subscription_path(emulators["project"], topic_id + "-sub"), topic=topic).name
    env = relctl_env(emulators, unique_prefix, topic_id, **operator_function)

    class Cli:
        def __init__(self):
            self.rig, self.env = rig, env

        def run(self, *args, timeout=60, **extra_env):
            proc = subprocess.run([str(RELCTL), *args], capture_output=True, text=True, timeout=timeout,
                                  env={**env, **extra_env}, cwd=REPO_ROOT)
            return proc.returncode, proc.stdout, proc.stderr

        def start(self, *args):
            return subprocess.Popen([str(RELCTL), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env, cwd=REPO_ROOT)

        def pull(self, count=1, timeout_s=20):
            got, deadline = [], time.monotonic() + timeout_s
            while len(got) < count and time.monotonic() < deadline:
                answer = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=10)
                if answer.received_messages:
                    subscriber.acknowledge(request={"subscription": subscription,
                                                    "ack_ids": [m.ack_id for m in answer.received_messages]})
                got += [m.message for m in answer.received_messages]
            assert len(got) == count, f"expected {count} published event(s), got {len(got)}"
            return got

        def dispatch(self, message):
            decision = rig.dispatcher.handle_message(message.message_id, dict(message.attributes), message.data)
            rig.deliver_lock_events()  # as the push subscription would
            return decision

    return Cli()


def bootstrap_requests(project, prefix):
    """The operator requests the function records, read by the rig's dispatcher (as deployed)."""
    from google.cloud import firestore

    from shared.adapters.firestore_operator_requests import FirestoreOperatorRequests

    return FirestoreOperatorRequests(firestore.Client(project=project), Settings(project=project,
                                                                                 collection_prefix=prefix))


# -- driving releases with the rig ------------------------------------------------------
def current(rig, rid):
    state = rig.state(rid)
    return next((s for s in STAGES if state.stages[s].status in (StageStatus.RUNNING, StageStatus.WAITING)), None)


def step(rig, rid, outcome="succeeded", reason="", result=None):
    """Finish whatever runs now (or approve what waits)."""
    stage, state = current(rig, rid), rig.state(rid)
    st = state.stages[stage]
    if stage == "approval":
        nonce = uuid.uuid4().hex
        rig.dispatcher.approvals.confirm(nonce)  # as on_approval records the POST from the link
        rig.send(uuid.uuid4().hex, {"type": "approval.decided", "release_id": rid, "stage": stage, "attempt": st.attempt,
                                    "nonce": nonce, "approver": APPROVER, "approve": True,
                                    "expires_at": st.deadline, "reason": "ship it"})
    else:
        rig.send(uuid.uuid4().hex, {"type": "stage.finished", "release_id": rid, "stage": stage,
                                    "stage_run_id": st.stage_run_id, "outcome": outcome, "reason": reason,
                                    "result": result or {}})
    return stage


def release_at(rig, stage, commit=None):
    rid = rig.new_release(commit or uuid.uuid4().hex[:16])
    rig.send(uuid.uuid4().hex, {"type": "release.started", "release_id": rid})
    for _ in range(len(STAGES) * 2):  # bounded: a refused step must fail the test, not hang it
        if current(rig, rid) == stage:
            return rid
        step(rig, rid)
    raise AssertionError(f"release never reached {stage}")


def finished_release(rig):
    rid = release_at(rig, "lint")
    for _ in range(len(STAGES) * 2):
        if not current(rig, rid):
            break
        step(rig, rid, result={"tests": 7, "failures": 0, "errors": 0, "skipped": 1} if current(rig, rid) == "unit" else None)
    assert rig.state(rid).status is ReleaseStatus.SUCCEEDED
    return rid


def assert_one_line_error(err, *words):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0]


# -- reading ------------------------------------------------------------------------------
def test_list_shows_releases_newest_first(cli):
    older = release_at(cli.rig, "unit")
    cli.rig.clock.advance(60)
    newer = release_at(cli.rig, "lint")
    code, out, err = cli.run("list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["RELEASE", "STATUS"]
    assert [line.split()[0] for line in lines[1:]] == [newer, older]
    assert lines[1].split()[1:4] == ["running", "v1.2.3-" + newer.split("-")[-1][:7], "lint"]
    code, out, _ = cli.run("list", "--json")
    assert [r["release_id"] for r in json.loads(out)] == [newer, older]


def test_show_names_stages_attempts_durations_and_the_failure(cli):
    rid = release_at(cli.rig, "unit")
    cli.rig.clock.advance(42)
    step(cli.rig, rid, outcome="failed", reason="3 tests failed")
    code, out, err = cli.run("show", rid)
    assert code == 0, err
    assert f"release {rid}  stopped" in out
    assert "stopped at unit: stage 2 'unit' failed: 3 tests failed" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ") and len(line.split()) > 3}
    assert rows["lint"].split()[2:5] == ["succeeded", "1", "0.0s"]
    assert rows["unit"].split()[2:5] == ["failed", "1", "42.0s"] and rows["unit"].endswith("3 tests failed")
    assert rows["approval"].split()[2:4] == ["pending", "0"]
    data = json.loads(cli.run("show", rid, "--json")[1])
    assert {s["id"]: s["status"] for s in data["stages"]}["unit"] == "failed"


def test_unknown_release_is_one_line_and_exit_1(cli):
    for command in (("show", "no-such-release"), ("notes", "no-such-release"), ("watch", "no-such-release"),
                    ("replay", "no-such-release", "lint", "--reason", "x")):
        code, out, err = cli.run(*command)
        assert code == 1, command
        assert_one_line_error(err, "unknown release 'no-such-release'")


def test_notes_of_a_finished_release(cli):
    rid = finished_release(cli.rig)
    code, out, err = cli.run("notes", rid)
    assert code == 0, err
    assert out.startswith("# Release 1.2.3 of acme/app")
    assert "| unit | 7 | 0 | 0 | 1 |" in out
    assert f"- approved by {APPROVER} at 2027-01-15T08:00:00Z — reason: ship it" in out
    assert "- 10 % at 2027-01-15T08:00:00Z by stage `prod-deploy`" in out
    assert "- 100 % at 2027-01-15T08:00:00Z by stage `traffic-100`" in out


def test_watch_follows_a_release_to_success(cli):
    rid = release_at(cli.rig, "lint")
    watcher = cli.start("watch", rid, "--timeout", "60")
    seen = [watcher.stdout.readline() for _ in range(2)]  # it saw lint running: now let the release move
    step(cli.rig, rid)
    time.sleep(1.5)
    while current(cli.rig, rid):
        step(cli.rig, rid)
    out, err = watcher.communicate(timeout=30)
    out = "".join(seen) + out
    assert watcher.returncode == 0, err
    assert "lint" in out.splitlines()[1] and "running (attempt 1)" in out.splitlines()[1]
    assert any("lint" in line and "succeeded (attempt 1)" in line for line in out.splitlines())
    assert out.strip().endswith(f"release {rid} succeeded: v1.2.3-{rid.split('-')[-1][:7]} takes all traffic")


def test_watch_exit_codes_for_stopped_and_timeout(cli):
    stopped = release_at(cli.rig, "lint")
    step(cli.rig, stopped, outcome="failed", reason="ruff found 3 errors")
    code, out, _ = cli.run("watch", stopped)
    assert code == 1 and "stopped: stage 1 'lint' failed: ruff found 3 errors" in out
    running = release_at(cli.rig, "unit")
    code, out, err = cli.run("watch", running, "--timeout", "1")
    assert code == 3
    assert_one_line_error(err, f"release {running} still running after 1s")


# -- publishing ------------------------------------------------------------------------------
def test_replay_publishes_the_event_the_gate_accepts(cli):
    rid = release_at(cli.rig, "unit")
    step(cli.rig, rid, outcome="failed", reason="flaky")
    code, out, err = cli.run("replay", rid, "unit", "--reason", "network flake", "--replay-id", "r-42", "--wait", "0")
    assert code == 0, err
    assert "requested replay r-42" in out and "by ops-user@example.com" in out
    (message,) = cli.pull()
    assert json.loads(message.data) == {"type": "stage.replay", "release_id": rid, "stage": "unit",
                                        "replay_id": "r-42", "requested_by": "ops-user@example.com",
                                        "reason": "network flake"}
    assert message.attributes["type"] == "stage.replay"
    cli.dispatch(message)
    state = cli.rig.state(rid)
    assert state.status is ReleaseStatus.RUNNING and state.stages["unit"].attempt == 2
    assert state.replays[-1]["replay_id"] == "r-42" and state.replays[-1]["accepted"]


def test_replay_waits_for_the_gate_and_reports_a_refusal(cli):
    rid = release_at(cli.rig, "unit")
    waiting = cli.start("replay", rid, "prod-deploy", "--reason", "try", "--as", "Alice@Example.com", "--wait", "30")
    (message,) = cli.pull()
    assert json.loads(message.data)["requested_by"] == "alice@example.com"
    cli.dispatch(message)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1
    assert_one_line_error(err, "refused", "stage 2 'unit' is running; replay when it ends")

    step(cli.rig, rid, outcome="failed", reason="flaky")
    accepted = cli.start("replay", rid, "unit", "--reason", "again", "--wait", "30")
    cli.dispatch(cli.pull()[0])
    out, err = accepted.communicate(timeout=30)
    assert accepted.returncode == 0, err
    assert "accepted: stage unit is running (attempt 2); release running" in out


def test_replay_of_a_stage_the_pipeline_does_not_have_is_refused_before_publishing(cli):
    rid = release_at(cli.rig, "unit")
    code, out, err = cli.run("replay", rid, "lintt", "--reason", "typo", "--wait", "0")
    assert code == 2 and out == ""  # a usage error, like any other wrong argument
    assert_one_line_error(err, f"relctl replay: error: release {rid} has no stage 'lintt' (did you mean 'lint'?)",
                          "lint, unit")


def test_resend_approval_is_a_replay_of_the_approval_stage(cli):
    rid = release_at(cli.rig, "approval")
    code, out, err = cli.run("resend-approval", rid, "--wait", "0")
    assert code == 0, err
    (message,) = cli.pull()
    data = json.loads(message.data)
    assert (data["type"], data["stage"], data["requested_by"]) == ("stage.replay", "approval", "ops-user@example.com")
    cli.dispatch(message)
    state = cli.rig.state(rid)
    assert state.stages["approval"].status is StageStatus.WAITING and state.stages["approval"].attempt == 2
    assert [r.attempt for r in cli.rig.dispatcher.approvals.requests] == [1, 2], "new links for a new attempt"


def test_chaos_request_and_its_refusal_while_running(cli):
    running = release_at(cli.rig, "unit")
    code, _, err = cli.run("chaos", running, "--wait", "0")
    assert code == 1
    assert_one_line_error(err, "only while it awaits approval")
    rid = release_at(cli.rig, "approval")
    code, out, err = cli.run("chaos", rid, "--as", "qa@example.com", "--wait", "0")
    assert code == 0, err
    (message,) = cli.pull()
    data = json.loads(message.data)
    assert (data["type"], data["release_id"], data["requested_by"]) == ("chaos.requested", rid, "qa@example.com")
    cli.dispatch(message)
    assert cli.rig.state(rid).stages["chaos"].status is StageStatus.RUNNING


def test_someone_not_on_the_operator_list_is_refused_in_one_line(cli):
    rid = release_at(cli.rig, "approval")
    code, _, err = cli.run("chaos", rid, "--as", "intruder@example.com", "--wait", "0")
    assert code == 1
    assert_one_line_error(err, "refused chaos (403)", "intruder@example.com is not an operator")


# -- files, Cloud Run and IAM (no Firestore needed) ----------------------------------------
def test_validate_accepts_the_shipped_pipeline(cli):
    code, out, err = cli.run("validate", "pipelines/noesis2.yaml")
    assert code == 0, err
    assert "pipeline noesis2, 17 stages" in out and "10a chaos (optional)" in out


def test_validate_points_at_the_stage_and_field(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (REPO_ROOT / "pipelines" / "noesis2.yaml").read_text()
    bad.write_text(text.replace("    kind: job\n", "    kind: jbo\n", 1))
    code, out, err = cli.run("validate", str(bad))
    assert code == 2 and out == ""
    line = text.splitlines().index("    kind: job") + 1
    assert_one_line_error(err, f"{bad}:{line}: stage 'staging-migrate': kind: unknown kind 'jbo' (did you mean 'job'?)")
    code, _, err = cli.run("validate", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert_one_line_error(err, "No such file or directory")
    bad.write_text("name: x\nstages: [\n")
    code, _, err = cli.run("validate", str(bad))
    assert code == 2
    assert_one_line_error(err, f"{bad}:3: not valid YAML")


def test_usage_errors_exit_2(cli):
    code, _, err = cli.run("replay", "some-release", "lint")
    assert code == 2 and "--reason" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    from local.standin.server import StandIn, StandInConfig

    config = StandInConfig(project="local-project", region="europe-west3", workspace=REPO_ROOT,
                           local_images=frozenset(), log_dir=tmp_path_factory.mktemp("standin-cli-logs"))
    with StandIn(config) as running:
        running.set_outcome("service", "cli-web-", "SUCCESS")
        running.set_outcome("service", "cli-slow-", "SUCCESS")
        yield running


def deploy(settings, version, commit, service="cli-web"):
    """A tagged revision of ``service`` through the real deploy executor; returns its name."""
    from shared.domain.commands import StartStage
    from shared.adapters.executors import RetryPolicy, build_executors
    from shared.domain.pipeline import parse_pipeline

    pipeline = parse_pipeline({"name": "cli", "stages": [
        {"id": "approval", "kind": "approval", "environment": "prod", "timeout": "1h",
         "params": {"approvers": ["boss@example.com"]}},
        {"id": "prod-deploy", "kind": "deploy", "environment": "prod", "timeout": "5m",
         "params": {"services": [service], "traffic_percent": 100}}]})
    executor = build_executors(settings, retry=RetryPolicy(timeout_s=1, call_timeout_s=5))["deploy"]
    run_id = f"rel-{commit}.prod-deploy.a1"
    command = StartStage(f"rel-{commit}", "prod-deploy", run_id, 1, "deploy",
                         {"tag": f"v{version}-{commit}", "version": version, "commit": commit})
    started = executor.start(pipeline, pipeline.stage("prod-deploy"), command)
    from shared.domain.state import StageState

    state = StageState(status=StageStatus.RUNNING, attempt=1, stage_run_id=run_id, result=dict(started.handle))
    for _ in range(100):
        if executor.poll(pipeline, pipeline.stage("prod-deploy"), state) is not None:
            return started.handle["revisions"][0]["revision"]
        time.sleep(0.05)
    raise AssertionError("deploy did not finish")


@pytest.fixture
def rollback_cli(cli, emulators, unique_prefix, token_issuer, standin, tmp_path):
    """relctl against an operator function that reaches the Cloud Run stand-in (project local-project),
    with a dispatcher rig and a subscription there, so a rollback's record can be followed to the gate."""
    from google.cloud import pubsub_v1

    project, topic_id = "local-project", f"events-{unique_prefix.strip('_')}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.create_topic(name=publisher.topic_path(project, topic_id)).name
    subscription = subscriber.create_subscription(
        name=subscriber.subscription_path(project, topic_id + "-sub"), topic=topic).name
    rig = make_rig(project, unique_prefix)
    rig.dispatcher.operator_requests = bootstrap_requests(project, unique_prefix)
    extra = {"RELEASE_PROJECT": project, "GOOGLE_CLOUD_PROJECT": project,
             "RELEASE_CLOUD_RUN_ENDPOINT": standin.endpoint}
    with running_operator_function(emulators, unique_prefix, token_issuer, tmp_path / "rollback-operator.log",
                                   **extra) as env:
        class RollbackCli:
            def __init__(self):
                self.rig = rig

            def run(self, *args):
                return cli.run(*args, **extra, **env)

            def pull(self):
                answer = subscriber.pull(request={"subscription": subscription, "max_messages": 10}, timeout=20)
                subscriber.acknowledge(request={"subscription": subscription,
                                                "ack_ids": [m.ack_id for m in answer.received_messages]})
                return [m.message for m in answer.received_messages]

        yield RollbackCli()


def histories_of(unique_prefix):
    """The operator function's revision histories (the same emulator and prefix)."""
    from google.cloud import firestore

    from shared.adapters.firestore_revision_history import FirestoreRevisionHistories

    return FirestoreRevisionHistories(firestore.Client(project="local-project"),
                                      Settings(project="local-project", collection_prefix=unique_prefix))


def verdicts(unique_prefix, service, **by_revision):
    """Record in the service's history how each named revision's release ended."""
    from shared.domain.revision_history import RevisionRecord, Verdict

    def change(h):
        for name, verdict in by_revision.items():
            h = h.with_revision(RevisionRecord(name, "rel-" + name[-4:])).with_verdict(name, Verdict(verdict))
        return h
    histories_of(unique_prefix).change(service, change)


def standin_settings(standin):
    return Settings(project="local-project", region="europe-west3", cloud_run_endpoint=standin.endpoint)


def test_rollback_goes_to_the_newest_revision_that_completed_a_release(rollback_cli, standin, unique_prefix):
    """Why: a plain rollback took the newest earlier revision even when that one had failed its canary."""
    settings = standin_settings(standin)
    first, failed, second = (deploy(settings, "1.0.0", "aaaaaaa"), deploy(settings, "1.0.5", "abababa"),
                             deploy(settings, "1.1.0", "bbbbbbb"))
    verdicts(unique_prefix, "cli-web", **{first: "completed", failed: "failed", second: "completed"})
    code, out, err = rollback_cli.run("rollback", "cli-web", "--reason", "slow pages", "--yes")
    assert code == 0, err
    assert f"rolled back cli-web: 100 % to {first} (version 1-0-0, commit aaaaaaa), was {second}" in out
    assert "by ops-user@example.com; no recent release deployed cli-web" in out
    web = next(s for s in standin.services if s.name.endswith("/services/cli-web"))
    assert {t.revision: t.percent for t in web.traffic} == {first: 100}
    (move,) = histories_of(unique_prefix).read("cli-web").moves
    assert (move.before, move.after, move.by, move.why) == (((second, 100),), ((first, 100),),
                                                            "ops-user@example.com", "slow pages")
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", "cli-web-nonexistent", "--force",
                                      "--reason", "x", "--yes")
    assert code == 1
    assert_one_line_error(err, "revision cli-web-nonexistent of cli-web does not exist")


def test_rollback_refuses_a_revision_that_failed_its_canary_unless_forced(rollback_cli, standin, unique_prefix):
    """Why: `relctl rollback` sent all traffic to a canary that had failed its checks without --force,
    and refused a revision whose release had succeeded as "failed its checks"."""
    settings = standin_settings(standin)
    good, canary, newest = (deploy(settings, "2.0.0", "ccccccc"), deploy(settings, "2.0.1", "ddddddd"),
                            deploy(settings, "2.0.2", "e0e0e0e"))
    verdicts(unique_prefix, "cli-web", **{good: "completed", canary: "failed", newest: "completed"})
    code, _, err = rollback_cli.run("rollback", "cli-web", "--to-revision", canary, "--reason", "x", "--yes")
    assert code == 1, (_, err)
    assert_one_line_error(err, f"revision {canary} of cli-web never completed a release (failed a canary)",
                          "--force")
    web = next(s for s in standin.services if s.name.endswith("/services/cli-web"))
    assert {t.revision: t.percent for t in web.traffic if t.percent}.get(canary) is None
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", good, "--reason", "x", "--yes")
    assert code == 0 and f"100 % to {good}" in out, err
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", canary, "--force", "--reason",
                                      "its fix is there", "--yes")
    assert code == 0 and f"100 % to {canary}" in out and "FORCED" in out, err
    assert histories_of(unique_prefix).read("cli-web").moves[-1].forced


def test_a_rollback_is_guarded_reason_confirmation_and_no_op(rollback_cli, standin, unique_prefix):
    """Why: `relctl rollback sample-web` (no reason, no prompt) moved 100 % of prod at once, and run
    again it reported a rollback "to X ... was X", a no-op shown as an action."""
    settings = standin_settings(standin)
    old, new = deploy(settings, "4.0.0", "1111111"), deploy(settings, "4.1.0", "2222222")
    verdicts(unique_prefix, "cli-web", **{old: "completed", new: "completed"})

    def serving():
        web = next(s for s in standin.services if s.name.endswith("/services/cli-web"))
        return {t.revision: t.percent for t in web.traffic if t.percent}

    code, out, err = rollback_cli.run("rollback", "cli-web")
    assert code == 2 and "--reason" in err and serving() == {new: 100}, err
    code, out, err = rollback_cli.run("rollback", "cli-web", "--reason", " ")
    assert code == 2 and "needs --reason" in err and serving() == {new: 100}, err
    # No --yes and no terminal (stdin is a pipe here): shows what would move, then refuses to act.
    code, out, err = rollback_cli.run("rollback", "cli-web", "--reason", "slow")
    assert code == 1 and serving() == {new: 100}, (out, err)
    assert f"cli-web serves now: {new} 100 %" in out and f"rollback sends 100 % to: {old}" in out
    assert_one_line_error(err, "not confirmed", "--yes")
    assert histories_of(unique_prefix).read("cli-web").moves == ()
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", old, "--reason", "slow", "--yes")
    assert code == 0 and serving() == {old: 100}, err
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", old, "--reason", "slow", "--yes")
    assert code == 1 and serving() == {old: 100}
    assert_one_line_error(err, f"cli-web already sends 100 % of its traffic to {old}; nothing to roll back")
    assert len(histories_of(unique_prefix).read("cli-web").moves) == 1


def test_a_rollback_by_hand_is_recorded_on_the_release_that_deployed_the_service(rollback_cli, standin,
                                                                                  unique_prefix):
    """Why: a manual rollback moved traffic with the operator's own credentials and recorded nothing."""
    settings = standin_settings(standin)
    old, new = deploy(settings, "3.0.0", "eeeeeee"), deploy(settings, "3.1.0", "fffffff")
    verdicts(unique_prefix, "cli-web", **{old: "completed", new: "completed"})
    rig = rollback_cli.rig
    rid = finished_release(rig)
    state, token = rig.store.get(rid)
    state.stages["prod-deploy"].result = {**state.stages["prod-deploy"].result,
                                          "revisions": [{"service": "cli-web", "revision": new}]}
    rig.store.update(state, token)
    code, out, err = rollback_cli.run("rollback", "cli-web", "--to-revision", old, "--reason", "pages slow", "--yes")
    assert code == 0, err
    assert f"recorded on release {rid} (stage prod-deploy)" in out
    (message,) = rollback_cli.pull()
    decision = rig.dispatcher.handle_message(message.message_id, dict(message.attributes), message.data)
    assert decision.outcome.value == "applied", decision.reason
    code, out, err = rollback_cli.run("show", rid)
    assert code == 0, err
    assert f"rolled back cli-web from {new} to {old}" in out and "by ops-user@example.com: pages slow" in out
    assert re.search(rf"\S+Z  rolled back prod-deploy by ops-user@example.com: cli-web from {new} to {old} "
                     r"\(pages slow\)", out), out
    notes = rollback_cli.run("notes", rid)[1]
    assert f"rolled back cli-web from {new} to {old}" in notes
    notices = rig.publisher.of_type("release.notice")
    assert any(n["kind"] == "rolled_back" and "ops-user@example.com rolled back cli-web" in n["message"]
               for n in notices), notices
    # A forged record (no operator request behind it) is refused.
    from shared.domain.events import RolledBack

    forged = RolledBack(uuid.uuid4().hex, rid, "prod-deploy", "cli-web", old, new, "mallory@example.com", "x",
                        "no-such-request")
    assert rig.dispatcher.handle(forged).outcome.value != "applied"


ROLLOUT_DELAY_S = float(os.environ.get("ROLLBACK_ROLLOUT_DELAY_S", "61"))  # past the operator function's 60 s


def test_a_rollback_whose_rollout_takes_minutes_answers_at_once_and_lands_when_it_ends(rollback_cli, standin,
                                                                                      unique_prefix):
    """Why: a rollback that had to wait for its rollout waited up to 300 s inside the operator function,
    whose timeout is 60 s. Now it answers with the operation; probes follow the rollout like any other,
    and the move reaches the timeline when the rollout ends."""
    from shared.adapters.executors import RetryPolicy, build_executors
    from shared.app.probing import ProbeService
    from shared.domain.wire import from_payload
    from shared.testing.fakes import FakeProbeScheduler, FakePublisher
    from shared.testing.probe_runner import run_due

    settings = standin_settings(standin)
    old, new = deploy(settings, "5.0.0", "5555555", "cli-slow"), deploy(settings, "5.1.0", "5656565", "cli-slow")
    verdicts(unique_prefix, "cli-slow", **{old: "completed", new: "completed"})
    rig = rollback_cli.rig
    rid = finished_release(rig)
    state, token = rig.store.get(rid)
    state.stages["prod-deploy"].result = {**state.stages["prod-deploy"].result,
                                          "revisions": [{"service": "cli-slow", "revision": new}]}
    rig.store.update(state, token)
    rig.dispatcher.probes = scheduler = FakeProbeScheduler()
    standin.delay_rollouts("cli-slow", ROLLOUT_DELAY_S)

    started = time.monotonic()
    code, out, err = rollback_cli.run("rollback", "cli-slow", "--to-revision", old, "--reason", "slow", "--yes")
    answered = time.monotonic() - started
    assert code == 0, err
    assert answered < 5, f"relctl rollback took {answered:.1f}s"
    assert re.search(rf"100 % to {old} .*; operation \S+/operations/\S+; by ops-user@example.com; recorded on "
                     rf"release {rid}", out), out
    (message,) = rollback_cli.pull()
    decision = rig.dispatcher.handle_message(message.message_id, dict(message.attributes), message.data)
    assert decision.outcome.value == "applied", decision.reason
    now = rig.state(rid)
    assert now.timeline[-1]["kind"] == "rollback rolling out" and not now.stages["prod-deploy"].result.get(
        "rolled_back"), now.timeline[-1]

    probes = ProbeService(rig.store, build_executors(settings, retry=RetryPolicy(timeout_s=1, call_timeout_s=5)),
                          FakePublisher(), scheduler, None, rig.clock, settings)
    landed = None
    while landed is None and time.monotonic() - started < ROLLOUT_DELAY_S + 30:
        run_due(probes, scheduler, float("inf"))
        found = probes.publisher.of_type("release.rolled_back")
        landed = found[0] if found else None
        if landed is None:
            time.sleep(1)
    ended = time.monotonic() - started
    assert landed is not None, "the rollout never ended"
    assert ended >= ROLLOUT_DELAY_S - 1, f"recorded after {ended:.1f}s, before the rollout ended"
    assert rig.dispatcher.handle(from_payload(uuid.uuid4().hex, landed)).outcome.value == "applied"
    (entry,) = rig.state(rid).stages["prod-deploy"].result["rolled_back"]
    assert (entry["from"], entry["revision"], entry["why"]) == (new, old, "slow")
    assert rig.state(rid).timeline[-1]["kind"] == "rolled back"
    print(f"relctl answered in {answered:.2f}s; the rollout ended and was recorded after {ended:.1f}s")


def test_preflight_reads_the_actual_policy(cli, standin):
    from shared.domain.pipeline import load_pipeline
    from shared.domain.preflight import required_roles

    account = "pipeline@local-project.iam.gserviceaccount.com"
    roles = sorted(required_roles(load_pipeline(REPO_ROOT / "pipelines" / "sample.yaml")))
    extra = {"RELEASE_PROJECT": "local-project", "RELEASE_IAM_ENDPOINT": standin.endpoint,
             "RELEASE_PIPELINE_FILE": str(REPO_ROOT / "pipelines" / "sample.yaml")}
    standin.set_iam_policy({role: [f"serviceAccount:{account}"] for role in roles})
    code, out, err = cli.run("preflight", **extra)
    assert code == 0, err
    assert out.startswith(f"preflight for {account}: OK")
    standin.set_iam_policy({role: [f"serviceAccount:{account}"] for role in roles if role != "roles/run.admin"})
    code, out, err = cli.run("preflight", **extra)
    assert code == 1 and "MISSING  roles/run.admin" in out


def test_release_notes_wire_the_store_from_the_environment(cli, monkeypatch):
    """What `make demo` prints at the end: notes via shared.bootstrap, configured like the functions."""
    from shared import bootstrap
    from shared.ui.notes import ReleaseNotFound

    rid = finished_release(cli.rig)
    for key in ("FIRESTORE_EMULATOR_HOST", "RELEASE_PROJECT", "RELEASE_COLLECTION_PREFIX"):
        monkeypatch.setenv(key, cli.env[key])
    bootstrap.reset()
    try:
        assert bootstrap.release_notes(rid) == cli.run("notes", rid)[1]
        with pytest.raises(ReleaseNotFound, match="unknown release 'nope'"):
            bootstrap.release_notes("nope")
    finally:
        monkeypatch.undo()
        bootstrap.reset()


def test_watch_in_a_terminal_redraws_the_whole_view(cli):
    import pty

    rid = release_at(cli.rig, "unit")
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(RELCTL), "watch", rid, "--timeout", "30"], stdout=slave, stderr=subprocess.PIPE,
                            env=cli.env, cwd=REPO_ROOT)
    os.close(slave)
    time.sleep(1.5)
    while current(cli.rig, rid):
        step(cli.rig, rid)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(30) == 0
    screen = re.sub(r"\x1b\[\d+m", "", b"".join(chunks).decode())  # colours off; the redraws stay
    draws = screen.split("\x1b[H\x1b[2J")[1:]
    assert len(draws) >= 2, "a first view, then a redraw after the release moved"
    assert f"release {rid}  running" in draws[0]
    assert f"release {rid}  succeeded" in draws[-1] and "traffic: 10 % at" in draws[-1]


def test_an_emulator_host_without_emulator_fails_fast_in_one_line(cli):
    from local.emulators import free_port

    started = time.monotonic()
    code, _, err = cli.run("list", FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_port()}", timeout=30)
    assert code == 1 and time.monotonic() - started < 15
    assert_one_line_error(err, "FIRESTORE_EMULATOR_HOST=127.0.0.1:", "no emulator answers there")


def test_queued_and_superseded_releases_in_show_and_watch(cli):
    holder = release_at(cli.rig, "staging-deploy")  # holds the staging lock

    def queued_release():
        cli.rig.clock.advance(10)
        rid = cli.rig.new_release(uuid.uuid4().hex[:16])
        cli.rig.send(uuid.uuid4().hex, {"type": "release.started", "release_id": rid})
        while current(cli.rig, rid):
            step(cli.rig, rid)
        assert cli.rig.state(rid).status is ReleaseStatus.QUEUED
        return rid

    older, newer = queued_release(), queued_release()
    code, out, err = cli.run("show", older)
    assert code == 0, err
    assert f"release {older}  queued" in out and "waiting for the staging lock" in out
    assert "queued: another release holds staging" in out
    assert [line.split()[1] for line in cli.run("list")[1].splitlines()[1:]] == ["queued", "queued", "running"]

    watcher = cli.start("watch", older, "--timeout", "60")
    time.sleep(1.5)
    while current(cli.rig, holder) != "approval":  # the holder gives staging back when it waits for approval
        step(cli.rig, holder)
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 1, err
    assert f"was superseded by release {newer} while queued for staging" in out
    assert cli.rig.state(newer).status is ReleaseStatus.RUNNING
