"""`make demo`: one whole release of the sample app through the local stack.

Starts the stack, sends a signed GitHub push webhook, prints each stage as it
moves, follows the approval link that arrives by mail (or, with --approve-by-hand,
prints every link that arrives and waits as long as the link is valid for your
click or `relctl approve`), measures the traffic split on the real service URL, and
prints the release notes. Every process it started is stopped on exit or Ctrl-C;
with --keep the stack stays up after the release until Ctrl-C.

--bad-canary releases a canary that answers its health checks but fails 5 % of real
requests, is three times slower and logs tracebacks: the canary analysis of the prod
smoke stops it, the canary is rolled back, and the evidence is printed.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from local.stack import PROJECT, REGION, LocalStack
from local.traffic import TrafficSampler, sample_share
from shared.app.config import REPO_ROOT, Settings
from shared.app.push import signature_for
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

DEMO_REPO = "example/sample-app"
PUSHER = "dev@example.com"
SAMPLE_VERSION = "1.0.0"
APPROVER = "approver@example.com"  # pipelines/sample.yaml
# What relctl needs to reach the local stack, printed as one export line (rollback and preflight need
# the stand-in endpoints and the sample pipeline, not only the emulators).
RELCTL_KEYS = ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS",
               "RELEASE_PROJECT", "RELEASE_REGION",
               "RELEASE_PIPELINE_FILE", "RELEASE_CLOUD_RUN_ENDPOINT", "RELEASE_IAM_ENDPOINT",
               "RELEASE_ARTIFACT_REGISTRY", "RELEASE_ARTIFACT_REGISTRY_ENDPOINT",
               "RELEASE_COLLECTION_PREFIX")  # only when a stack keeps its releases apart (tests)
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_\-.=%]+)")


def commit_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        return sha.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "0123456789abcdef0123456789abcdef01234567"


PUSH_DELIVERIES = 6  # GitHub-style redeliveries of a push that got no answer in 10 s


def send_push(stack: LocalStack, commit: str, repo: str = DEMO_REPO) -> dict:
    body = json.dumps({
        "ref": "refs/heads/main", "after": commit, "repository": {"full_name": repo},
        "pusher": {"name": "dev", "email": PUSHER}, "sender": {"login": "dev"},
        "head_commit": {"id": commit, "message": f"Release the sample app\n\nRelease-Version: {SAMPLE_VERSION}"},
        "before": "0" * 40, "compare": f"https://github.com/{repo}/commit/{commit[:12]}",
        "commits": [{"id": commit, "message": f"Release the sample app\n\nRelease-Version: {SAMPLE_VERSION}",
                     "author": {"name": "dev", "email": PUSHER}}],
    }).encode()
    request = urllib.request.Request(stack.urls["on-push"] + "/", data=body, method="POST", headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": f"demo-{time.time_ns()}",
        "X-Hub-Signature-256": signature_for(stack.webhook_secret, body),
    })
    # GitHub gives a webhook 10 s, then marks the delivery failed; "Redeliver" sends the same
    # delivery again. A cold on_push on busy cores can miss the 10 s, so do as GitHub's redelivery
    # does (same body, same X-GitHub-Delivery): the same commit answers "exists", same release.
    for attempt in range(1, PUSH_DELIVERIES + 1):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
            break
        except (TimeoutError, urllib.error.URLError) as exc:
            if isinstance(exc, urllib.error.HTTPError) or attempt == PUSH_DELIVERIES:
                raise
            print(f"push webhook: no answer within 10 s ({exc}); redelivering ({attempt + 1} of {PUSH_DELIVERIES})")
            time.sleep(2)
    print(f"push webhook answered {response.status}: {answer}")
    return answer


class Printer:
    """Prints a line whenever a stage changes status."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.seen: dict[str, tuple] = {}

    def show(self, state: ReleaseState) -> None:
        for stage in self.pipeline.stages:
            st = state.stages[stage.id]
            key = (st.status, st.attempt)
            if self.seen.get(stage.id) == key or (st.status is StageStatus.PENDING and stage.id not in self.seen):
                continue
            self.seen[stage.id] = key
            took = f" in {st.duration_s:.1f}s" if st.duration_s is not None else ""
            detail = f": {st.reason}" if st.reason else ""
            print(f"  [{stage.number:>3}] {stage.name:<28} {st.status.value}{took}{detail}", flush=True)


def service_url(stack: LocalStack, name: str) -> str:
    from shared.adapters.gcp_clients import run_services

    settings = Settings(project=PROJECT, region=REGION, cloud_run_endpoint=stack.standin_endpoint)
    return run_services(settings).get_service(name=f"projects/{PROJECT}/locations/{REGION}/services/{name}").uri


def approve_by_link(link: str) -> None:
    with urllib.request.urlopen(link, timeout=10) as page:
        html = page.read().decode()
    title = re.search(r"<title>(.*?)</title>", html, re.S)
    print(f"  GET  confirm page: {page.status} {title.group(1).strip() if title else ''} (changes nothing)")
    token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["token"][0]
    form = urllib.parse.urlencode({"token": token, "decision": "approve", "reason": "demo approval"}).encode()
    request = urllib.request.Request(link.split("?")[0], data=form, method="POST",
                                     headers={"User-Agent": "make-demo approver"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(f"  POST approve: {answer.status}")


def run(args) -> int:
    from local.mailbox import Mailbox
    from shared.domain.pipeline import load_pipeline

    pipeline_file = bad_canary_pipeline() if args.bad_canary else REPO_ROOT / "pipelines" / "sample.yaml"
    pipeline = load_pipeline(pipeline_file)
    started = time.monotonic()
    with Mailbox() as mailbox, LocalStack(smtp_port=mailbox.port, pipeline_file=pipeline_file,
                                          github_app=True) as stack:
        print(f"local stack up in {time.monotonic() - started:.1f}s")
        print(f"  telemetry: Cloud Run metrics sampled every {stack.metric_sample_s:g} s, readable "
              f"{stack.metric_delay_s:g} s later (GCP: 60 s and up to 180 s); logs after {stack.log_delay_s:g} s")
        print(f"  dashboard: {stack.urls['dashboard']}/")
        print("  relctl:    in another shell, paste this line, then run .venv/bin/relctl list")
        print(f"    {relctl_env_line(stack)}")
        from shared import bootstrap

        store = bootstrap.firestore_store(Settings(project=PROJECT))
        release_id = send_push(stack, commit_sha())["release_id"]
        printer = Printer(pipeline)
        approved = chaos_requested = False
        links: list[str] = []
        sampler = TrafficSampler(service_url(stack, "sample-web"))
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            state = store.get(release_id)[0]
            printer.show(state)
            if state.status is ReleaseStatus.STOPPED and not (args.approve_by_hand and state.stopped_at_stage == "approval"):
                print(f"release stopped: {state.reason}")
                print_github(stack, state)
                if args.bad_canary:
                    return keep(args, stack, show_stopped_canary(state, sampler, stack))
                return keep(args, stack, 1)
            if state.status is ReleaseStatus.CANCELLED:
                print(f"release {state.reason}")
                print_github(stack, state)
                return keep(args, stack, 1)
            if args.chaos and not chaos_requested and state.status is ReleaseStatus.AWAITING_APPROVAL:
                from shared.ui.operator_client import call_operator

                call_operator(Settings.from_env(stack.operator_env(), project=PROJECT), "chaos",
                              {"release_id": release_id}, as_="qa@example.com")
                chaos_requested = True
                print("  chaos smoke requested (run_chaos=true)")
            elif state.status is ReleaseStatus.AWAITING_APPROVAL and args.approve_by_hand:
                deadline = max(deadline, wait_for_hand(state, mailbox, links))
            elif state.status is ReleaseStatus.AWAITING_APPROVAL and not approved:
                link = LINK.search(mailbox.wait_for(APPROVER, timeout_s=30)).group(1)
                print(f"  approval link sent to {APPROVER}: {link}")
                approve_by_link(link)
                approved = True
            if state.stages["prod-deploy"].status is StageStatus.RUNNING and not sampler.samples:
                sampler.__enter__()  # sample from before the split until after the last stage
            if state.status is ReleaseStatus.SUCCEEDED:
                sampler.__exit__()
                deploy, last = state.stages["prod-deploy"], state.stages["traffic-100"]
                share, n = sampler.share(state.version, deploy.finished_at, last.started_at)
                print(f"  traffic split: {share:.0%} of {n} requests to {sampler.url} between the prod deploy "
                      f"and traffic 100 % were answered by the new revision (target 10 %)")
                share = sample_share(sampler.url, state.version)
                print(f"  after traffic 100 %: {share:.0%} of 200 requests answered by {state.tag}")
                print(f"release {release_id} succeeded in {time.monotonic() - started:.1f}s")
                print_github(stack, state)
                print_notes(release_id)
                return keep(args, stack, 0)
            time.sleep(0.2)
        print(f"release did not finish within {args.timeout}s; logs are in {stack.workdir / 'logs'}")
        return keep(args, stack, 1)


def print_github(stack: LocalStack, state: ReleaseState, wait_s: float = 15.0) -> None:
    """What the release left on GitHub (the stand-in's record): each deployment with its statuses,
    and the commit status; waits briefly for reports still under way (a retry after a fault)."""
    github = stack.github
    if github is None:
        return
    repo = state.repo.lower()
    deadline = time.monotonic() + wait_s
    def last_commit_state() -> str:
        return ((github.commit_statuses.get(repo) or [{}])[-1]).get("state") or "pending"

    while last_commit_state() == "pending" and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"  GitHub (the stand-in at {github.url}), {state.repo} @ {state.commit[:12]}:")
    for deployment in github.deployments.get(repo, []):
        print(f"    deployment {deployment['id']} {deployment['environment']}:")
        for status in deployment["statuses"]:
            print(f"      {status['state']:<11} {status['description']}")
    for status in github.commit_statuses.get(repo, []):
        print(f"    commit status {status['context']}: {status['state']:<8} {status['description']}")
    print(f"    (the dashboard links them: {stack.urls['dashboard']}/release/{state.release_id})")


def relctl_env_line(stack: LocalStack) -> str:
    env = stack.function_env()
    values = {k: env[k] for k in RELCTL_KEYS if env.get(k)} | stack.operator_env()
    return "export " + " ".join(f"{k}={v}" for k, v in values.items())


def wait_for_hand(state: ReleaseState, mailbox, links: list[str]) -> float:
    """Print every approval link not printed yet (a resend sends new ones); the demo then waits
    as long as the newest link is valid. Returns that deadline on the monotonic clock."""
    for body in mailbox.bodies_for(APPROVER):
        found = LINK.search(body)
        if found and found.group(1) not in links:
            links.append(found.group(1))
            print(f"  approval link sent to {APPROVER} (valid until the approval expires):\n    {found.group(1)}")
            print(f"  open it in a browser, or run: relctl approve {state.release_id} --as {APPROVER}")
    expires = state.stages["approval"].deadline or time.time()
    return time.monotonic() + max(0.0, expires - time.time()) + 5


def keep(args, stack: LocalStack, code: int) -> int:
    """--keep: leave the stack up for relctl and the dashboard until Ctrl-C."""
    if not args.keep:
        return code
    print(f"the local stack stays up (dashboard {stack.urls['dashboard']}/); Ctrl-C stops it")
    while True:
        time.sleep(3600)


def bad_canary_pipeline():
    """sample.yaml with a prod deploy whose revision is a bad canary (sample_app/server.py)."""
    import tempfile
    from pathlib import Path

    import yaml

    document = yaml.safe_load((REPO_ROOT / "pipelines" / "sample.yaml").read_text())
    deploy = next(s for s in document["stages"] if s["id"] == "prod-deploy")
    deploy["params"]["env"]["CANARY_FAULTS"] = "5xx=0.05,slow=3,error_logs=0.05"
    path = Path(tempfile.gettempdir()) / f"sample-bad-canary-{time.time_ns()}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    print(f"bad canary: the prod deploy sets CANARY_FAULTS=5xx=0.05,slow=3,error_logs=0.05 ({path})")
    return path


def show_stopped_canary(state: ReleaseState, sampler: TrafficSampler, stack: LocalStack) -> int:
    """The analysis stopped the canary: print its evidence and show the rollback on the service URL."""
    from shared.domain.analysis import evidence_lines

    if sampler.samples:
        sampler.__exit__()
    smoke = state.stages["prod-smoke"]
    latest = ((smoke.result or {}).get("analysis") or {}).get("latest")
    print("  canary analysis evidence:")
    for line in evidence_lines(latest) if latest else [smoke.reason or "(none recorded)"]:
        print(f"    {line}")
    health = json.loads(urllib.request.urlopen(service_url(stack, "sample-web") + "/health/liveliness",
                                               timeout=5).read())
    share = sample_share(service_url(stack, "sample-web"), state.version)
    print(f"  health of the service stayed green ({health}); after the rollback {share:.0%} of 200 requests "
          f"were answered by {state.tag}")
    return 0 if smoke.status is StageStatus.FAILED and share == 0 else 1


def print_notes(release_id: str) -> None:
    from shared import bootstrap

    print()
    print(bootstrap.release_notes(release_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--approve-by-hand", action="store_true",
                        help="print every approval link and wait as long as it is valid for your click "
                             "(or relctl approve); a rejected or expired approval can be re-sent meanwhile")
    parser.add_argument("--keep", action="store_true", help="leave the stack up after the release until Ctrl-C")
    parser.add_argument("--chaos", action="store_true", help="request the optional chaos smoke (10a)")
    parser.add_argument("--bad-canary", action="store_true",
                        help="release a canary with green health checks that the canary analysis must stop")
    parser.add_argument("--timeout", type=int, default=300, help="seconds to wait for the release")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks, stop every process
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the local stack")
        return 130


if __name__ == "__main__":
    sys.exit(main())
