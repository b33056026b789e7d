"""A whole release of the sample app through the local stack, the way `make demo` runs it:
each function in its own functions-framework process, real push subscriptions, the
stand-in running the stages, the approval link arriving by real SMTP."""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from local.demo import LINK, PUSHER, commit_sha, send_push, service_url
from local.mailbox import Mailbox
from local.stack import PROJECT, LocalStack
from local.traffic import TrafficSampler, sample_share
from tests.e2e.browser import CHROMIUM, OUTPUT, page_statuses
from tests.waits import wait_for_release
from shared.app.config import Settings
from shared.adapters.firestore_store import FirestoreStore
from shared.domain.state import ReleaseStatus, StageStatus

pytestmark = pytest.mark.emulators


@pytest.fixture(scope="module")
def stack(emulators, tmp_path_factory):
    with Mailbox() as mailbox, LocalStack(workdir=tmp_path_factory.mktemp("stack"), smtp_port=mailbox.port,
                                          reuse_emulators={"firestore": emulators["firestore"],
                                                           "pubsub": emulators["pubsub"]}) as running:
        running.mailbox = mailbox
        yield running


def test_release_runs_to_the_approval_link_then_to_full_traffic(stack):
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    answer = send_push(stack, commit_sha())
    assert answer["status"] == "created" and re.fullmatch(r"v\d+\.\d+\.\d+-[0-9a-f]{7}", answer["tag"])
    rid = answer["release_id"]

    waiting = wait_for_release(store, rid, lambda s: s.status is ReleaseStatus.AWAITING_APPROVAL, "the approval")
    before_approval = {s for s, st in waiting.stages.items() if st.status is StageStatus.SUCCEEDED}
    assert before_approval == {"preflight", "lint", "unit", "build", "push", "e2e", "vector-schema",
                               "staging-migrate", "staging-deploy", "ingestion-smoke", "staging-smoke"}
    assert waiting.stages["unit"].result["tests"] >= 1, "unit test counts come from the JUnit report"

    link = LINK.search(stack.mailbox.wait_for("approver@example.com")).group(1)
    with urllib.request.urlopen(link, timeout=10) as confirm:
        assert confirm.status == 200 and "approve" in confirm.read().decode().lower()
    assert store.get(rid)[0].status is ReleaseStatus.AWAITING_APPROVAL, "GET changes nothing"

    token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["token"][0]
    sampler = TrafficSampler(service_url(stack, "sample-web"))
    with sampler:
        post = urllib.request.Request(link.split("?")[0], method="POST", data=urllib.parse.urlencode(
            {"token": token, "decision": "approve", "reason": "e2e"}).encode())
        with urllib.request.urlopen(post, timeout=10) as answer_page:
            assert answer_page.status == 200
        done = wait_for_release(store, rid, lambda s: s.status is ReleaseStatus.SUCCEEDED and not s.outbox,
                                "the release's success")
    assert done.approval["approver"] == "approver@example.com" and done.pushed_by == PUSHER

    share, samples = sampler.share(done.version, done.stages["prod-deploy"].finished_at,
                                   done.stages["traffic-100"].started_at)
    # The prod smoke bakes 3 s on the canary, so the split lasts long enough for hundreds of samples.
    assert samples >= 300
    assert 0.04 < share < 0.2, f"about 10 % expected during the split, saw {share:.1%} of {samples}"
    assert sample_share(sampler.url, done.version, requests=50) == 1.0

    # The link worked once: a second POST is refused and changes nothing.
    with pytest.raises(urllib.error.HTTPError) as again:
        urllib.request.urlopen(urllib.request.Request(link.split("?")[0], method="POST", data=urllib.parse.urlencode(
            {"token": token, "decision": "approve"}).encode()), timeout=10)
    assert again.value.code == 409
    assert store.get(rid)[0].to_dict() == done.to_dict()


def test_the_same_push_again_starts_nothing_new(stack):
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    releases_before = [r.release_id for r in store.list_releases()]
    answer = send_push(stack, commit_sha())
    assert answer["status"] == "exists"
    assert [r.release_id for r in store.list_releases()] == releases_before
    assert json.loads(json.dumps(answer))["release_id"] in releases_before


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_dashboard_function_of_the_stack_shows_the_release_as_firestore_holds_it(stack, page):
    """The `dashboard` function of the local stack, in headless Chromium, after the release above."""
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    release = store.list_releases(limit=1)[0]
    page.goto(f"{stack.urls['dashboard']}/release/{release.release_id}")
    page.wait_for_selector("[data-stage]")
    shown = page_statuses(page)
    assert shown == {stage: st.status.value for stage, st in release.stages.items()}
    assert shown["traffic-100"] == "succeeded" and shown["chaos"] == "skipped"
    page.screenshot(path=str(OUTPUT / "dashboard-local-stack.png"), full_page=True)
    assert page.errors == []


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)")
def test_the_dashboards_log_links_of_a_build_and_a_job_open_their_logs(stack, page):
    """Issue 15: the dashboard links each build's and job's log; in the local stack the stand-in
    serves the log files it wrote over HTTP on loopback, so the link opens in the browser."""
    from google.cloud import firestore

    store = FirestoreStore(firestore.Client(project=PROJECT), Settings(project=PROJECT))
    release = next(r for r in store.list_releases(limit=20) if r.status is ReleaseStatus.SUCCEEDED)
    page.goto(f"{stack.urls['dashboard']}/release/{release.release_id}")
    page.wait_for_selector("[data-stage]")
    build_link = page.get_attribute('tr[data-row="unit"] a[data-field="log"]', "href")
    job_link = page.get_attribute('[data-stage="staging-migrate"] a[data-field="log"]', "href")
    for link in (build_link, job_link):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/logs/(builds|executions)/[\w.-]+", link or ""), link
    page.click("details.stage-table > summary")  # the stage table is folded (issue 26): open it as a reader does
    page.click('tr[data-row="unit"] a[data-field="log"]')  # the table's link opens in the same tab
    page.wait_for_url(build_link)
    assert "Step #0 (" in page.inner_text("body")  # what the stand-in wrote before the step's own output
    page.goto(job_link)
    assert "migrate: applied" in page.inner_text("body")  # the job's own stdout (sample_app/migrate.py)


def test_the_stack_enforces_deploys_iam_bindings(stack):
    """The release above ran with IAM enforced: the stand-in refuses an unauthenticated call and
    a call of an account deploy/ grants nothing (issue 12: the whole release passes with deploy/'s
    bindings and no more)."""
    import grpc
    from google.api_core import exceptions
    from google.cloud.devtools import cloudbuild_v1
    from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport

    from local.standin.identity import mint_key
    from shared.adapters import gcp_clients

    anonymous = cloudbuild_v1.CloudBuildClient(
        transport=CloudBuildGrpcTransport(channel=grpc.insecure_channel(stack.standin_endpoint)))
    with pytest.raises(exceptions.Unauthenticated):
        anonymous.list_builds(project_id=PROJECT, retry=None)
    stranger = mint_key(stack.workdir / "keys", f"stranger@{PROJECT}.iam.gserviceaccount.com")
    previous = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(stranger)
    try:
        client = gcp_clients.cloud_build(Settings(project=PROJECT, cloud_build_endpoint=stack.standin_endpoint))
        with pytest.raises(exceptions.PermissionDenied, match="cloudbuild.builds.list"):
            list(client.list_builds(project_id=PROJECT, retry=None))
    finally:
        if previous is None:
            os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        else:
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = previous
