"""Every `relctl` command the demo, `show`, `watch` and the notices (mail) print during real local
releases (a success, a cancel, a freeze, a bad canary) is run, in the state where it was printed,
with nothing but the demo's export line, and does what it says; a printed command not run fails the
test. The command examples of the README's operator section are run too."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import time

import pytest

from local.demo import (APPROVER, DEMO_REPO, PUSHER, bad_canary_pipeline, commit_sha, relctl_env_line, send_push,
                        service_url, wait_for_hand)
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from local.traffic import TrafficSampler
from shared.app.config import REPO_ROOT, Settings
from shared.app.push import signature_for
from shared.domain.state import ReleaseStatus
from tests.integration.test_cli import RELCTL

pytestmark = pytest.mark.emulators
PRINTED = re.compile(r"(?:`|run: )(relctl [^`\n]+?)(?:`|$)", re.M)

# Its own collections: the other e2e files share the session's emulators and release the same
# sample app and commit (their pushes would meet this file's releases and version floor).
PREFIX = "printed_"


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    with Mailbox() as mailbox, LocalStack(workdir=tmp_path_factory.mktemp("stack"), smtp_port=mailbox.port, collection_prefix=PREFIX,
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

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT, collection_prefix=PREFIX))
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


# -- more releases on the same stack: a cancel, a freeze ------------------------------------------
TEAM = "release-team@example.com"  # the stack's RELEASE_NOTIFY_EMAILS


def older_commit(n: int) -> str:
    """Another commit of this checkout's current tree (the stand-in builds `git archive` the pushed
    commit from it): an unreferenced commit object, so each push is a new release of today's code."""
    return subprocess.run(["git", "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", f"test release {n}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()


def push(stack, commit: str, version: str) -> str:
    """A push as GitHub sends it, releasing ``version`` (the demo's push always says 1.0.0)."""
    import urllib.request

    message = f"Next release\n\nRelease-Version: {version}"
    body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"full_name": DEMO_REPO},
                       "pusher": {"name": "dev", "email": PUSHER}, "sender": {"login": "dev"},
                       "head_commit": {"id": commit, "message": message}, "before": "0" * 40,
                       "commits": [{"id": commit, "message": message, "author": {"name": "dev", "email": PUSHER}}]
                       }).encode()
    request = urllib.request.Request(stack.urls["on-push"] + "/", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": f"t-{time.time_ns()}",
        "X-Hub-Signature-256": signature_for(stack.webhook_secret, body)})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["release_id"]


def mails(stack, rid: str) -> str:
    return "\n".join(b for b in stack.mailbox.bodies_for(TEAM) if rid in b)


def store_of():
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore

    return FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT, collection_prefix=PREFIX))


def test_every_command_printed_around_a_cancel_and_a_freeze_works(stack):
    store, operator = store_of(), Operator(relctl_env_line(stack))

    cancelled = push(stack, older_commit(1), "1.0.1")
    wait_for(store, cancelled, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    code, out, err = operator.run(f'relctl cancel {cancelled} --reason "wrong build"', timeout=60)
    assert code == 0 and "cancelled: release" in out, err
    time.sleep(2)  # the cancel notice is mailed after the write
    for command in operator.harvest(mails(stack, cancelled)) + operator.harvest(
            operator.run(f"relctl show {cancelled}")[1]):
        code, out, err = operator.run(command)
        assert code == 0, (command, err)  # show / list / notes of a cancelled release

    code, out, err = operator.run('relctl freeze --reason "quarter close"')
    assert code == 0, err
    frozen = push(stack, older_commit(2), "1.0.2")
    wait_for(store, frozen, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    # The approval page's "Production runs" is what Cloud Run serves now (the first test's 1.0.0).
    import urllib.request

    from local.demo import LINK

    time.sleep(2)
    link = [LINK.search(b).group(1) for b in stack.mailbox.bodies_for(APPROVER) if frozen in b and LINK.search(b)][-1]
    with urllib.request.urlopen(link, timeout=30) as page:
        html = page.read().decode()
    assert re.search(r"<dt>Production runs</dt><dd>sample-web: 100 % version 1-0-0 \(commit [0-9a-f]{7}, release "
                     r"example-sample-app-[0-9a-f]{12}\)", html), html[html.find("Production"):][:300]
    with TrafficSampler(service_url(stack, "sample-web")):
        printed = operator.harvest(operator.run(f"relctl show {frozen}")[1])
        assert sorted(printed) == [f"relctl approve {frozen} --as {APPROVER}", "relctl unfreeze"], printed
        assert operator.run(printed[0] if "approve" in printed[0] else printed[1])[0] == 0
        state = wait_for(store, frozen, lambda s: s.status is ReleaseStatus.QUEUED)
        assert state.waiting_for == "prod"
        shown = operator.run(f"relctl show {frozen}")[1]
        assert "queued for prod: prod is frozen" in shown and "another release holds" not in shown
        assert operator.harvest(shown) == ["relctl unfreeze"], shown
        code, out, err = operator.run("relctl unfreeze")
        assert code == 0 and f"{frozen} goes on" in out, err
        done = wait_for(store, frozen, lambda s: s.status is ReleaseStatus.SUCCEEDED)
    assert [e for e in json.loads(operator.run(f"relctl show {frozen} --json")[1])["timeline"]
            if e["kind"].startswith("prod ")][-1]["kind"] == "prod unfrozen"
    assert done.version == "1.0.2"
    for command in operator.harvest(mails(stack, frozen)):
        if command not in operator.ran:
            code, _, err = operator.run(command)
            assert code == 0, (command, err)
    missed = [c for c in operator.printed if c not in operator.ran]
    assert not missed, f"printed but not run: {missed}"


def test_the_readme_operator_examples_run_against_the_stack(stack):
    """The `$ relctl …` lines of the README's operator section, on a release of this stack."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Operating releases"):readme.index("## Canary analysis")]
    store, operator = store_of(), Operator(relctl_env_line(stack))
    done = next(s for s in store.list_releases() if s.status is ReleaseStatus.SUCCEEDED)
    examples = re.findall(r"^\$ (relctl .+)$", section, re.M)
    assert examples, "the section shows commands"
    for example in examples:
        rid = re.search(r"example-sample-app-[0-9a-f]{12}", example)
        command = example.replace(rid.group(0), done.release_id) if rid else example
        code, out, err = operator.run(command)
        shown = section[section.index(example) + len(example):].split("\n$ ", 1)[0].strip().splitlines()[0]
        if shown.startswith("relctl: error:"):
            assert code == 1 and err.strip() == shown.replace(rid.group(0), done.release_id), (command, err)
        else:
            assert code == 0, (command, err)
            first = out.splitlines()[0]
            assert first.split()[:1] == shown.split()[:1] and done.release_id in first, (command, first, shown)


def test_relctl_and_the_dashboard_say_what_runs_where(stack):
    """After the releases above: prod's sample-web serves 1.0.2 (the freeze test's) at 100 %."""
    import urllib.request

    store, operator = store_of(), Operator(relctl_env_line(stack))
    newest = next(s for s in store.list_releases() if s.status is ReleaseStatus.SUCCEEDED)
    code, out, err = operator.run("relctl where")
    assert code == 0, err
    prod = out[out.index("  prod\n"):]
    row = next(line for line in prod.splitlines() if line.strip().startswith("sample-web "))
    assert " 100 %" in row and "version 1-0-2" in row and f"by release {newest.release_id} (traffic-100)" in row \
        or f"by release {newest.release_id} (prod-deploy)" in row, out
    with urllib.request.urlopen(stack.urls["dashboard"] + "/where", timeout=30) as page:
        html = page.read().decode()
    assert page.status == 200 and 'data-service="sample-web" data-environment="prod"' in html
    assert f'href="release/{newest.release_id}"' in html


# -- a bad canary, on a stack whose prod deploy is one -------------------------------------------
@pytest.fixture(scope="module")
def bad_stack(emulators, tmp_path_factory):
    with Mailbox() as mailbox, LocalStack(workdir=tmp_path_factory.mktemp("bad-stack"), smtp_port=mailbox.port, collection_prefix=PREFIX,
                                          pipeline_file=bad_canary_pipeline(),
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        running.mailbox = mailbox
        yield running


def test_every_command_printed_after_a_bad_canary_works(bad_stack):
    store, operator = store_of(), Operator(relctl_env_line(bad_stack))
    rid = push(bad_stack, older_commit(3), "1.1.0")
    wait_for(store, rid, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL)
    with TrafficSampler(service_url(bad_stack, "sample-web")):
        (approve,) = operator.harvest(operator.run(f"relctl show {rid}")[1])
        assert operator.run(approve)[0] == 0  # the success test's stack is another application record: no freeze
        deadline = time.monotonic() + 240
        while store.get(rid)[0].status is not ReleaseStatus.STOPPED and time.monotonic() < deadline:
            time.sleep(0.5)
    stopped = store.get(rid)[0]
    assert stopped.status is ReleaseStatus.STOPPED and stopped.stopped_at_stage == "prod-smoke", stopped.reason
    time.sleep(2)  # the stage_failed notice is mailed after the write
    printed = operator.harvest(mails(bad_stack, rid)) + operator.harvest(operator.run(f"relctl show {rid}")[1])
    replays = [c for c in printed if c.startswith("relctl replay")]
    assert replays and all(f"relctl replay {rid} prod-deploy" in c for c in replays), printed
    code, out, err = operator.run(replays[0], timeout=60)
    assert code == 0 and "accepted: stage prod-deploy" in out, (out, err)
    for command in operator.printed:
        if command not in operator.ran:
            code, _, err = operator.run(command)
            assert code == 0, (command, err)
