"""Every `relctl` command the demo, `show` and `watch` print during a real local release is run,
in the state where it was printed, with nothing but the demo's export line, and does what it says.

So far the successful release (issue 26 asks the same of a bad canary, a cancel and a freeze)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import time

import pytest

from local.demo import APPROVER, commit_sha, relctl_env_line, send_push, service_url, wait_for_hand
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from local.traffic import TrafficSampler
from shared.app.config import REPO_ROOT, Settings
from shared.domain.state import ReleaseStatus
from tests.integration.test_cli import RELCTL

pytestmark = pytest.mark.emulators
PRINTED = re.compile(r"(?:`|run: )(relctl [^`\n]+?)(?:`|$)", re.M)


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    with Mailbox() as mailbox, LocalStack(workdir=tmp_path_factory.mktemp("stack"), smtp_port=mailbox.port,
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        running.mailbox = mailbox
        yield running


def exported(line: str) -> dict[str, str]:
    """The variables of the demo's `export K=V …` line, as a shell that pasted it has them."""
    words = shlex.split(line)
    assert words[0] == "export"
    return dict(word.split("=", 1) for word in words[1:])


class Operator:
    """A shell with the export line pasted: runs relctl, keeps every command printed and every one run."""

    def __init__(self, line: str):
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASE_", "FIRESTORE_", "PUBSUB_",
                                                                          "GOOGLE_", "RELCTL_"))}
        self.env = {**base, **exported(line)}
        self.printed: list[str] = []
        self.ran: list[str] = []

    def run(self, command: str, timeout: float = 120) -> tuple[int, str, str]:
        words = shlex.split(command)
        assert words[0] == "relctl"
        proc = subprocess.run([str(RELCTL), *words[1:]], capture_output=True, text=True, env=self.env,
                              cwd=REPO_ROOT, timeout=timeout)
        self.ran.append(command)
        self.harvest(proc.stdout + proc.stderr)
        return proc.returncode, proc.stdout, proc.stderr

    def harvest(self, text: str) -> list[str]:
        found = [c.strip() for c in PRINTED.findall(text)]
        self.printed += [c for c in found if c not in self.printed]
        return found


def wait_for(store, rid, condition, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = store.get(rid)[0]
        if condition(state):
            return state
        assert state.status is not ReleaseStatus.STOPPED, state.reason
        time.sleep(0.3)
    raise AssertionError(f"timed out; release is {store.get(rid)[0].status}")


def test_every_command_printed_during_a_successful_release_works(stack):
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    operator = Operator(relctl_env_line(stack))
    code, out, err = operator.run("relctl preflight")  # the export line carries the stand-in and a key
    assert code == 0, out + err
    assert out.startswith("preflight for pipeline@") and ": OK" in out.splitlines()[0], out

    rid = send_push(stack, commit_sha())["release_id"]
    wait_for(store, rid, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    printed_by_demo = io.StringIO()
    with contextlib.redirect_stdout(printed_by_demo):
        for _ in range(100):  # the mail may take a moment
            wait_for_hand(store.get(rid)[0], stack.mailbox, [])
            if "relctl approve" in printed_by_demo.getvalue():
                break
            time.sleep(0.2)
    demo = operator.harvest(printed_by_demo.getvalue())
    shown = operator.harvest(operator.run(f"relctl show {rid}")[1])
    watched = operator.harvest(operator.run(f"relctl watch {rid} --timeout 2")[1])
    approve = f"relctl approve {rid} --as {APPROVER}"
    assert demo == shown == watched == [approve], (demo, shown, watched)

    with TrafficSampler(service_url(stack, "sample-web")):  # the canary analysis needs requests, as in the demo
        code, out, err = operator.run(approve)
        assert code == 0, err
        assert out.startswith(f"approved release {rid} (stage approval, attempt 1) as {APPROVER}")
        done = wait_for(store, rid, lambda s: s.status is ReleaseStatus.SUCCEEDED)
    assert done.approval["approver"] == APPROVER

    for command in (f"relctl show {rid}", f"relctl watch {rid}", f"relctl notes {rid}", "relctl list"):
        code, out, err = operator.run(command)
        assert code == 0, (command, err)
    for command in operator.printed:
        if command not in operator.ran:
            pytest.fail(f"printed but not run: {command}")
