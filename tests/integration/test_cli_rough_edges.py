"""The rough edges an operator met with the installed `relctl` (issue 26, section 5), each through
the real command: a pipe that closes, a finished release replayed, an unknown service rolled back,
a pipeline file that releases nothing, a stack that is down, durations, and `watch` while nothing
is recorded (a bake, an approval)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import pytest

from local.emulators import free_port
from shared.app.ports import StartResult
from shared.app.config import REPO_ROOT
from shared.domain.pipeline import StageKind
from tests.integration import test_cli as base
from tests.integration.test_cli import RELCTL, assert_one_line_error, finished_release, release_at, step
from tests.integration.test_cli_operator import approval_requests
from tests.unit.gate_helpers import APPROVER

pytestmark = pytest.mark.emulators
cli, operator_function, token_issuer = base.cli, base.operator_function, base.token_issuer
standin, rollback_cli = base.standin, base.rollback_cli


def test_a_reader_that_stops_early_ends_relctl_quietly(cli):
    for _ in range(3):
        release_at(cli.rig, "lint")
    # The pipe's reader is gone before relctl writes its first line: EPIPE on the first print.
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([str(RELCTL), "list"], stdout=write, stderr=subprocess.PIPE, text=True,
                          env=cli.env, cwd=REPO_ROOT, timeout=60)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")
    # And as an operator types it.
    shell = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.quote(str(RELCTL))} list | head -1"],
                           capture_output=True, text=True, env=cli.env, cwd=REPO_ROOT, timeout=60)
    assert shell.returncode == 0 and shell.stderr == "", shell.stderr
    assert shell.stdout.split()[:2] == ["RELEASE", "STATUS"]


def test_replaying_a_finished_release_is_refused_at_once_with_the_reason(cli):
    rid = finished_release(cli.rig)
    started = time.monotonic()
    code, out, err = cli.run("replay", rid, "unit", "--reason", "once more")
    assert time.monotonic() - started < 8, "answered at once, not after the 10 s wait"
    assert code == 1
    assert_one_line_error(err, "refused replay (409)", f"release {rid} is succeeded",
                          "push a new commit to release again")
    assert "not handled" not in err


def test_rolling_back_a_service_that_does_not_exist_is_404(rollback_cli):
    code, out, err = rollback_cli.run("rollback", "nosuch-svc", "--reason", "bad deploy", "--yes")
    assert code == 1
    assert_one_line_error(err, "refused rollback (404)", "nosuch-svc")


def test_validate_refuses_a_pipeline_that_names_no_repository(cli, tmp_path):
    text = (REPO_ROOT / "pipelines" / "sample.yaml").read_text()
    assert "repositories: [example/sample-app]\n" in text
    for name, replacement in (("missing", ""), ("empty", "repositories: []\n")):
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(text.replace("repositories: [example/sample-app]\n", replacement))
        code, out, err = cli.run("validate", str(bad))
        assert (code, out) == (2, ""), (name, out)
        assert_one_line_error(err, f"relctl: invalid pipeline: {bad}: repositories: must list at least one")


def test_a_stack_that_is_down_is_one_plain_sentence(cli):
    nobody = f"http://127.0.0.1:{free_port()}"
    for variable, who in (("RELEASE_OPERATOR_URL", "the operator function"),
                          ("RELEASE_OPERATOR_TOKEN_URL", "the local token issuer")):
        code, out, err = cli.run("freeze", "--app", "mini", "--reason", "x", **{variable: nobody})
        assert code == 1
        assert_one_line_error(err, f"relctl: error: {who}", f"does not answer at {nobody}", "is it running?")
        assert "ConnectionError" not in err and "HTTPConnectionPool" not in err and "Max retries" not in err


def test_durations_are_printed_to_the_millisecond(cli):
    rid = release_at(cli.rig, "lint")
    cli.rig.clock.advance(0.1)
    cli.rig.clock.advance(0.2)  # 0.1 + 0.2 is 0.30000000000000004 on a float clock
    step(cli.rig, rid)
    data = json.loads(cli.run("show", rid, "--json")[1])
    lint = next(s for s in data["stages"] if s["id"] == "lint")
    assert lint["duration_s"] == 0.3
    code, out, _ = cli.run("watch", rid, "--json", "--timeout", "1")
    durations = [r["duration_s"] for r in map(json.loads, out.splitlines()) if r.get("duration_s") is not None]
    assert durations == [0.3]
    assert "in 0.3s" in cli.run("watch", rid, "--timeout", "1")[1]


def test_watch_on_an_approval_says_who_may_approve_and_the_command_works(cli):
    rid = release_at(cli.rig, "approval")
    approval_requests(cli, rid)
    code, out, err = cli.run("watch", rid, "--timeout", "2")
    assert code == 3, err
    assert f"asked of {APPROVER} since" in out
    commands = re.findall(r"`(relctl approve [^`]+)`", out)
    assert commands == [f"relctl approve {rid} --as {APPROVER}"], out
    code, out, err = cli.run(*shlex.split(commands[0])[1:])
    assert code == 0, err
    assert out.startswith(f"approved release {rid} (stage approval, attempt 1) as {APPROVER}")


def test_watch_during_a_bake_says_where_the_bake_stands(cli):
    executor, plain = cli.rig.executor, cli.rig.executor.start

    def start_with_a_bake(pipeline, stage, command):  # the check executor's handle (http_check.py)
        started = plain(pipeline, stage, command)
        if stage.kind is StageKind.CHECK:
            return StartResult(handle={**started.handle, "window_s": 60, "bake_s": 300}, finished=started.finished)
        return started

    executor.start = start_with_a_bake
    rid = release_at(cli.rig, "staging-smoke")
    code, out, err = cli.run("watch", rid, "--timeout", "3.5", "--every", "1")
    assert code == 3, err
    lines = out.splitlines()
    baking = [line for line in lines if "staging-smoke baking:" in line]
    assert len(baking) >= 2, out  # at the start, then again while nothing changes
    assert "planned up to 1m00s window + 5m00s bake" in baking[0]
    assert sum(line.startswith("  progress: staging-smoke running for") for line in lines) >= 2, out


def test_freeze_refuses_unknown_applications_keeps_its_reason_and_reaches_the_timeline(cli):
    cli.rig.clock.t = time.time()  # the operator function records freezes on the real clock
    rid = release_at(cli.rig, "approval")
    code, out, err = cli.run("freeze", "--app", "nosuch", "--reason", "typo")
    assert code == 1 and out == ""
    assert_one_line_error(err, "refused freeze (404)", "no application 'nosuch' (applications: mini, noesis2)")
    assert cli.run("freeze", "--app", "mini", "--reason", "quarter close")[0] == 0
    code, _, err = cli.run("freeze", "--app", "mini", "--reason", "something else", "--as", "alice@example.com")
    assert code == 1
    assert_one_line_error(err, "refused freeze (409)", "already frozen by ops-user@example.com: quarter close",
                          "relctl unfreeze first")
    step(cli.rig, rid)  # approved: held back from prod by the freeze, not by another release
    out = cli.run("show", rid)[1]
    assert "queued for prod: prod is frozen (see above), no other release holds it" in out, out
    assert "another release holds" not in out
    assert re.search(r"prod-migrate +queued .* queued: prod is frozen$", out, re.M), out
    assert re.search(r"\S+Z  prod frozen by ops-user@example.com: quarter close", out), out
    assert cli.run("unfreeze", "--app", "mini")[0] == 0
    timeline = [e["text"] for e in json.loads(cli.run("show", rid, "--json")[1])["timeline"]]
    assert [t.split("  ", 1)[1] for t in timeline if "prod " in t] == [
        "prod frozen by ops-user@example.com: quarter close", "prod unfrozen by ops-user@example.com"]


# -- what runs where ------------------------------------------------------------------------------
def test_where_says_what_each_service_serves_now_and_which_release_put_it_there(cli, standin, tmp_path):
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore
    from shared.app.config import Settings
    from shared.domain.pipeline import load_pipeline
    from shared.domain.state import StageStatus, new_release
    from tests.integration.test_cli import deploy

    settings = Settings(project="local-project", region="europe-west3", cloud_run_endpoint=standin.endpoint)
    pipeline_file = tmp_path / "cli.yaml"
    pipeline_file.write_text(
        "name: cli\nrepositories: [acme/cli]\nstages:\n"
        "  - {id: approval, kind: approval, environment: prod, timeout: 1h, params: {approvers: [boss@example.com]}}\n"
        "  - {id: prod-deploy, kind: deploy, environment: prod, timeout: 5m,\n"
        "     params: {services: [cli-web], traffic_percent: 100}}\n")
    pipeline = load_pipeline(str(pipeline_file))
    old, new = deploy(settings, "1.0.0", "aaaaaaa"), deploy(settings, "1.1.0", "bbbbbbb")
    store = FirestoreStore(firestore.Client(project="local-project"),
                           Settings(project="local-project", collection_prefix=cli.env["RELEASE_COLLECTION_PREFIX"]))
    state = new_release(pipeline, repo="acme/cli", ref="refs/heads/main", commit="bbbbbbb0000", version="1.1.0",
                        pushed_by="dev@example.com", now=time.time() - 60)
    st = state.stages["prod-deploy"]
    st.status, st.attempt, st.started_at, st.finished_at = StageStatus.SUCCEEDED, 1, time.time() - 30, time.time() - 20
    st.result = {"revisions": [{"service": "cli-web", "revision": new, "percent": 100}]}
    store.save_pipeline(pipeline)
    assert store.create(state)
    env = {"RELEASE_PROJECT": "local-project", "GOOGLE_CLOUD_PROJECT": "local-project",
           "RELEASE_REGION": "europe-west3", "RELEASE_CLOUD_RUN_ENDPOINT": standin.endpoint}
    code, out, err = cli.run("where", "--pipeline", str(pipeline_file), **env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["cli", "  prod"], out
    row = lines[2].split()
    assert row[:4] == ["cli-web", new, "100", "%"] and "version 1-1-0  commit bbbbbbb" in lines[2]
    assert lines[2].endswith(f"by release {state.release_id} (prod-deploy)"), lines[2]
    assert lines[3].strip().startswith("image ") and lines[3].strip() != "image ?", out
    assert old not in out  # it serves nothing now
    data = json.loads(cli.run("where", "--pipeline", str(pipeline_file), "--json", **env)[1])
    (placement,) = data["placements"]
    assert (placement["serving"]["revision"], placement["serving"]["percent"], placement["release_id"]) == (
        new, 100, state.release_id)
