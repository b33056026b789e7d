"""The installed `relctl` for the operator's day: approve / reject through the operator function,
--json on every command with ISO 8601 times, usage errors exit 2, --help, --version, colour."""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import pytest

from shared.app.config import REPO_ROOT, Settings
from shared.domain.approval_record import ApprovalRecord
from tests.integration import test_cli as base
from tests.integration.test_cli import RELCTL, assert_one_line_error, finished_release, release_at, step
from tests.unit.gate_helpers import APPROVER, PUSHER

pytestmark = pytest.mark.emulators
# The fixtures of test_cli.py: the installed relctl, the operator function, the token issuer.
cli, operator_function, token_issuer = base.cli, base.operator_function, base.token_issuer
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def approval_requests(cli, rid):
    """The approval requests the links would carry, one per approver (as ApprovalService.request makes them)."""
    from google.cloud import firestore

    from shared.adapters.firestore_approvals import FirestoreApprovalStore

    settings = Settings(project=cli.env["RELEASE_PROJECT"], collection_prefix=cli.env["RELEASE_COLLECTION_PREFIX"])
    store = FirestoreApprovalStore(firestore.Client(project=settings.project), settings)
    state = cli.rig.state(rid)
    st = state.stages["approval"]
    for approver in (APPROVER,):
        store.create(ApprovalRecord(nonce=uuid.uuid4().hex, release_id=rid, stage="approval", attempt=st.attempt,
                                    approver=approver, expires_at=st.deadline, tag=state.tag,
                                    created_at=cli.rig.clock.now()))
    return store


def test_approve_goes_through_the_operator_function_under_the_links_rules(cli):
    rid = release_at(cli.rig, "approval")
    store = approval_requests(cli, rid)
    code, out, err = cli.run("approve", rid, "--as", "alice@example.com")  # an operator, not an approver
    assert code == 1
    assert_one_line_error(err, "refused approve (403)", "alice@example.com is not an approver")
    code, out, err = cli.run("approve", rid, "--as", PUSHER)  # an approver, but it is their push
    assert code == 1
    assert_one_line_error(err, "(403)", "pushed this commit and cannot approve it")
    code, out, err = cli.run("approve", rid, "--as", APPROVER, "--reason", "staging evidence read", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert (answer["decision"], answer["approver"], answer["release_id"]) == ("approved", APPROVER, rid)
    (message,) = cli.pull()
    event = json.loads(message.data)
    assert (event["type"], event["approver"], event["approve"], event["reason"]) == (
        "approval.decided", APPROVER, True, "staging evidence read")
    record = store.get(event["nonce"])
    assert record.consumed and record.user_agent.startswith("relctl (operator request ")
    code, _, err = cli.run("reject", rid, "--as", APPROVER, "--reason", "too late")  # single use per attempt
    assert code == 1
    assert_one_line_error(err, "(409)", "no open approval request")


def test_reject_needs_a_reason_and_records_it(cli):
    rid = release_at(cli.rig, "approval")
    approval_requests(cli, rid)
    code, out, err = cli.run("reject", rid, "--as", APPROVER)
    assert code == 2 and out == ""
    assert "reject needs --reason" in err and "Traceback" not in err
    code, out, err = cli.run("reject", rid, "--as", APPROVER, "--reason", "the migration is not reversible")
    assert code == 0, err
    assert out.startswith(f"rejected release {rid} (stage approval, attempt 1) as {APPROVER}")
    (message,) = cli.pull()
    assert json.loads(message.data)["approve"] is False


def test_every_command_speaks_json_with_iso_times(cli, tmp_path):
    done = finished_release(cli.rig)
    listing = json.loads(cli.run("list", "--json")[1])
    assert listing[0]["release_id"] == done and ISO.match(listing[0]["created_at"])
    shown = json.loads(cli.run("show", done, "--json")[1])
    assert ISO.match(shown["release"]["created_at"]) and ISO.match(shown["stages"][0]["started_at"])
    assert ISO.match(shown["release"]["approval"]["at"])
    notes = json.loads(cli.run("notes", done, "--json")[1])
    assert notes["release_id"] == done and notes["markdown"].startswith("# Release 1.2.3")
    watched = [json.loads(line) for line in cli.run("watch", done, "--json")[1].splitlines()]
    assert watched[-1] == {"release_id": done, "final": True, "status": "succeeded", "reason": ""}
    assert all(ISO.match(w["finished_at"]) for w in watched if w.get("stage") and w["status"] == "succeeded")
    code, out, _ = cli.run("validate", "pipelines/sample.yaml", "--json")
    assert code == 0 and json.loads(out)["exit"] == 0 and json.loads(out)["stages"][11] == {"number": "10a", "id": "chaos", "kind": "build",
                                                           "optional": True}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [{id: a, kind: jbo, timeout: 1m}]\n")
    code, out, err = cli.run("validate", str(bad), "--json")
    assert code == 2 and json.loads(out) == {
        "file": str(bad), "valid": False, "exit": 2,
        "error": f"{bad}:2: stage 'a': kind: unknown kind 'jbo' (did you mean 'job'?) "
                 "(one of build, job, deploy, traffic, check, approval, preflight)"}
    code, out, err = cli.run("show", "no-such-release", "--json")
    assert code == 1 and json.loads(out) == {"error": "unknown release 'no-such-release'", "exit": 1}
    assert err == "relctl: error: unknown release 'no-such-release'\n"  # the prefix is the text's, not the JSON's
    code, out, err = cli.run("watch", listing[0]["release_id"], "--json")
    assert code == 0
    rid = release_at(cli.rig, "unit")
    code, out, err = cli.run("watch", rid, "--timeout", "0.5", "--json")  # a timeout says so in JSON too
    assert code == 3 and json.loads(out.splitlines()[-1]) == {
        "error": f"release {rid} still running after 0.5s", "exit": 3}
    code, out, err = cli.run("replay", rid, "lint", "--reason", "x", "--wait", "1", "--json")  # not handled
    assert code == 3 and json.loads(out.splitlines()[-1])["exit"] == 3, (out, err)


@pytest.mark.parametrize("args, words", [
    (("list", "--limit", "-3"), "-3 is not from 1 to 500"),
    (("list", "--limit", "x"), "'x' is not a whole number"),
    (("reject", "some-release"), "reject needs --reason"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2_with_one_line(cli, args, words):
    code, out, err = cli.run(*args)
    assert code == 2 and out == "" and words in err and "Traceback" not in err


def test_help_and_version(cli):
    code, out, _ = cli.run("--help")
    assert code == 0
    for part in ("examples:", "relctl approve acme-app-", "environment:", "RELEASE_OPERATOR_URL", "NO_COLOR",
                 "exit status:", "2 usage error"):
        assert part in out
    assert "examples:" in cli.run("approve", "--help")[1]
    code, out, _ = cli.run("--version")
    assert code == 0 and re.fullmatch(r"relctl \d+\.\d+\.\d+\n", out)


def run_in_terminal(cli, *args, **env):
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(RELCTL), *args], stdout=slave, stderr=subprocess.PIPE,
                            env={**cli.env, **env}, cwd=REPO_ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(30) == 0
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal_and_never_under_no_color(cli):
    rid = release_at(cli.rig, "unit")
    step(cli.rig, rid, outcome="failed", reason="3 tests failed")
    assert "\x1b[31mstopped\x1b[0m" in run_in_terminal(cli, "show", rid)
    assert "\x1b[" not in run_in_terminal(cli, "show", rid, NO_COLOR="1")
    assert "\x1b[" not in cli.run("show", rid)[1]  # a pipe


def test_cancel_stops_the_release_and_show_tells_who_and_why(cli):
    rid = release_at(cli.rig, "prod-migrate")
    code, out, err = cli.run("cancel", rid, "--reason", "wrong build", "--wait", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["requested_by"] == "ops-user@example.com"
    (message,) = cli.pull()
    decision = cli.dispatch(message)
    assert decision.outcome.value == "applied", decision.reason
    state = cli.rig.state(rid)
    assert state.status.value == "cancelled" and state.locks_held == []
    code, out, err = cli.run("show", rid)
    assert code == 0, err
    assert f"release {rid}  cancelled" in out and "cancelled by ops-user@example.com: wrong build" in out
    assert re.search(r"timeline:\n    \S+Z  approved approval \(attempt 1\) by boss@example.com: ship it\n"
                     r"    \S+Z  cancelled prod-migrate by ops-user@example.com: wrong build", out), out
    assert "| cancelled | prod-migrate | ops-user@example.com | wrong build |" in cli.run("notes", rid)[1]
    code, _, err = cli.run("cancel", rid, "--reason", "again")
    assert code == 1
    assert_one_line_error(err, "is cancelled; nothing to cancel")
    code, _, err = cli.run("watch", rid)
    assert code == 1


def test_show_of_a_waiting_approval_says_who_since_when_and_until(cli):
    rid = release_at(cli.rig, "approval")
    st = cli.rig.state(rid).stages["approval"]
    out = cli.run("show", rid)[1]
    from shared.ui.notes import iso

    assert (f"approval (attempt 1) asked of {APPROVER} since {iso(st.started_at)}; links expire at "
            f"{iso(st.deadline)}") in out


def test_show_gives_elapsed_times_and_an_expected_end_from_earlier_releases(cli):
    rid = release_at(cli.rig, "unit")
    out = cli.run("show", rid)[1]
    assert re.search(r"progress: unit running for \S+; release running for \S+; no estimate yet", out), out
    finished_release(cli.rig)  # its durations become the application's medians (apps/{app}, RecordDurations)
    out = cli.run("show", rid)[1]
    assert re.search(r"progress: unit running for \S+; release running for \S+; about \S+ left plus the approval",
                     out), out
    data = json.loads(cli.run("show", rid, "--json")[1])["progress"]
    assert data["stage"] == "unit" and ISO.match(data["eta_at"]) and data["waits_for_human"] is True


def test_dead_letters_are_listed_and_one_is_redriven_once(cli):
    from google.cloud import firestore

    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
    from shared.domain.dead_letters import DeadLetter
    from shared.domain.events import ReleaseStarted
    from shared.domain.wire import encode

    settings = Settings(project=cli.env["RELEASE_PROJECT"], collection_prefix=cli.env["RELEASE_COLLECTION_PREFIX"])
    letters = FirestoreDeadLetters(firestore.Client(project=settings.project), settings)
    data, attributes = encode(ReleaseStarted("", "acme-app-0123456789ab"))
    letter_id = f"letter-{uuid.uuid4().hex[:8]}"
    assert letters.record(DeadLetter(letter_id, "the store was down", "dispatch", 1_800_000_000.0, data, attributes))
    code, out, err = cli.run("dead-letters")
    assert code == 0, err
    assert f"{letter_id}  2027-01-15T08:00:00Z  release.started  acme-app-0123456789ab" in out
    assert "the store was down" in out and f"(relctl redrive {letter_id})" in out
    code, out, err = cli.run("redrive", letter_id)
    assert code == 0, err
    assert out.startswith(f"re-drove dead letter {letter_id} as message ")
    (message,) = cli.pull()
    assert json.loads(message.data) == {"type": "release.started", "release_id": "acme-app-0123456789ab"}
    listed = json.loads(cli.run("dead-letters", "--json")[1])
    assert listed[0]["redriven_as"] == message.message_id and ISO.match(listed[0]["redriven_at"])
    code, _, err = cli.run("redrive", letter_id)
    assert code == 1
    assert_one_line_error(err, "(409)", "was re-driven already")
    code, _, err = cli.run("redrive", "no-such-letter")
    assert code == 1
    assert_one_line_error(err, "(404)", "no dead letter 'no-such-letter'")


def test_a_freeze_holds_every_release_out_of_prod_until_it_is_lifted(cli):
    rid = release_at(cli.rig, "approval")
    app = cli.rig.state(rid).pipeline_name
    code, out, err = cli.run("freeze", "--app", app, "--reason", "quarter close")
    assert code == 0, err
    assert out.strip() == (f"prod of {app} is frozen (by ops-user@example.com): no release enters prod until "
                           "relctl unfreeze")
    step(cli.rig, rid)  # approved: prod-migrate asks for the prod lock and is held back
    state = cli.rig.state(rid)
    assert state.status.value == "queued" and state.waiting_for == "prod"
    out = cli.run("show", rid)[1]
    assert re.search(r"FROZEN: prod is frozen by ops-user@example.com since \S+Z: quarter close; no release "
                     r"enters prod until `relctl unfreeze`", out), out
    code, out, err = cli.run("unfreeze", "--app", app, "--json")
    assert code == 0, err
    assert json.loads(out)["granted_to"] == rid
    (message,) = cli.pull()
    assert json.loads(message.data) == {"type": "lock.granted", "release_id": rid, "environment": "prod"}
    cli.dispatch(message)
    assert cli.rig.state(rid).stages["prod-migrate"].status.value == "running"
    assert "FROZEN" not in cli.run("show", rid)[1]


def test_skip_bake_is_for_approvers_and_the_probes_verdict_ends_the_bake(cli):
    """relctl skip-bake through the operator function: refused for a non-approver, recorded for an
    approver; the skip probe's verdict, not the request, ends the stage (through the gate)."""
    from shared.domain.bake_skip import skip_probe_task, skip_step
    from shared.domain.probes import IntervalVerdict, ProbeVerdict
    from tests.unit.test_bake_skip import PIPELINE as BAKE

    rig = cli.rig
    rid = rig.new_release(uuid.uuid4().hex[:16], pipeline=BAKE)
    rig.send(uuid.uuid4().hex, {"type": "release.started", "release_id": rid})
    for _ in range(40):  # bounded: a refused step must fail the test, not hang it
        state = rig.state(rid)
        stage = next(s.id for s in BAKE.stages if state.stages[s.id].status.value in ("running", "waiting"))
        if stage == "prod-smoke":
            break
        st = state.stages[stage]
        if stage == "approval":
            nonce = uuid.uuid4().hex
            rig.dispatcher.approvals.confirm(nonce)
            rig.send(uuid.uuid4().hex, {"type": "approval.decided", "release_id": rid, "stage": stage,
                                        "attempt": st.attempt, "nonce": nonce, "approver": APPROVER,
                                        "approve": True, "expires_at": st.deadline, "reason": "ok"})
        else:
            rig.send(uuid.uuid4().hex, {"type": "stage.finished", "release_id": rid, "stage": stage,
                                        "stage_run_id": st.stage_run_id, "outcome": "succeeded", "result": {}})
    code, out, err = cli.run("skip-bake", rid, "--wait", "0")  # ops-user: an operator, not an approver
    assert code == 1
    assert_one_line_error(err, "refused skip-bake (403)", "only an approver")
    code, out, err = cli.run("skip-bake", rid, "--as", APPROVER, "--reason", "canary is fine", "--wait", "0",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["stage"] == "prod-smoke"
    (message,) = cli.pull()
    assert cli.dispatch(message).outcome.value == "applied"
    state = rig.state(rid)
    assert state.stages["prod-smoke"].status.value == "running"
    code, out, err = cli.run("skip-bake", rid, "--as", APPROVER, "--wait", "0")
    assert code == 1 and "already asked" in err
    task = skip_probe_task(rid, "prod-smoke", state.stages["prod-smoke"], BAKE.digest)
    step_ = skip_step(task, [{"path": "/", "status": 200, "latency_ms": 2}], rig.clock.now(),
                      lambda config, interval: IntervalVerdict(ProbeVerdict.PASS, "clean"))
    rig.send(uuid.uuid4().hex, {"type": "stage.finished", "release_id": rid, "stage": "prod-smoke",
                                "stage_run_id": task.stage_run_id, "outcome": step_.outcome.value,
                                "reason": step_.reason, "result": dict(step_.result)})
    code, out, err = cli.run("show", rid)
    assert code == 0, err
    assert re.search(r"\S+Z  bake skip requested prod-smoke by boss@example.com: canary is fine\n"
                     r"    \S+Z  bake ended early prod-smoke by boss@example.com: canary is fine", out), out
    assert "bake ended early" in cli.run("notes", rid)[1]
