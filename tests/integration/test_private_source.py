"""Private source code as Cloud Build reaches it: a build stage names a 2nd-gen connected
repository, the executor makes Source.connectedRepository at the pushed commit, and the stand-in
fetches it through the connection; an anonymous gitSource of a private repository fails the
stage at fetch, as git without credentials fails on Cloud Build."""
from __future__ import annotations

import subprocess
import sys

import pytest

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.adapters.executors.cloud_build import CloudBuildExecutor, finish_of_build
from shared.app.config import Settings
from shared.domain.commands import StartStage
from shared.domain.pipeline import parse_pipeline
from shared.domain.events import Outcome

PROJECT = "private-project"
CONNECTED = f"projects/{PROJECT}/locations/europe-west3/connections/github/repositories/acme-app"


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def private_repo(tmp_path_factory):
    """A repository with two commits; the second is the one pushed (its VERSION file says 2)."""
    repo = tmp_path_factory.mktemp("acme-app")
    git(repo, "init", "-q", "-b", "main")
    for version in ("1", "2"):
        (repo / "VERSION").write_text(version)
        git(repo, "add", "VERSION")
        git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", f"v{version}")
    return repo, git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def standin(tmp_path_factory, private_repo):
    cfg = StandInConfig(project=PROJECT, log_dir=tmp_path_factory.mktemp("private-source"))
    with StandIn(cfg) as running:
        running.connect_repository(CONNECTED, str(private_repo[0]))
        running.mark_private(str(private_repo[0]))  # its anonymous URL needs credentials
        yield running


def pipeline(source, out):
    step = {"name": "local", "entrypoint": sys.executable,
            "args": ["-c", f"import shutil; shutil.copy('VERSION', {str(out)!r})"]}
    return parse_pipeline({"name": "acme-app", "image": "app", "repositories": ["acme/app"], "stages": [
        {"id": "unit", "number": "1", "kind": "build", "timeout": "2m", "params": {"source": source, "steps": [step]}}]})


def run_stage(standin, private_repo, source, out, release):
    repo, commit = private_repo
    # RELEASE_SOURCE_URL: where `source: git` fetches anonymously (on GCP https://github.com/<repo>.git)
    settings = Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint, source_url=str(repo))
    flow = pipeline(source, out)
    command = StartStage(release, "unit", f"{release}.unit.a1", 1, "build",
                         {"tag": "v1.0.0", "version": "1.0.0", "commit": commit, "repo": "acme/app"})
    start = CloudBuildExecutor(settings, gcp_clients.cloud_build(settings)).start(flow, flow.stage("unit"), command)
    build = standin.finished_build(start.handle["build_id"])
    return build, finish_of_build(build)


def test_a_build_from_the_connected_repository_gets_the_pushed_commit(standin, private_repo, tmp_path):
    _, head = private_repo
    out = tmp_path / "VERSION"
    build, finish = run_stage(standin, private_repo, {"connected_repository": "projects/${project}/locations/"
                              "europe-west3/connections/github/repositories/acme-app"}, out, "acme-app-r1")
    assert build.source.connected_repository.repository == CONNECTED
    assert build.source.connected_repository.revision == head
    assert finish.outcome is Outcome.SUCCEEDED, build.status_detail
    assert out.read_text() == "2"  # the pushed commit, not the branch's first


def test_an_anonymous_git_source_of_the_private_repository_fails_the_stage_at_fetch(standin, private_repo, tmp_path):
    out = tmp_path / "VERSION"
    build, finish = run_stage(standin, private_repo, "git", out, "acme-app-r2")
    assert build.source.git_source.url  # what `source: git` makes: no credentials
    assert finish.outcome is Outcome.FAILED
    assert "could not read Username" in build.status_detail and "failed to fetch source" in build.status_detail
    assert not out.exists()


def test_a_repository_no_connection_holds_fails_at_fetch(standin, private_repo, tmp_path):
    build, finish = run_stage(standin, private_repo, {"connected_repository": f"projects/{PROJECT}/locations/"
                              "europe-west3/connections/github/repositories/other"}, tmp_path / "V", "acme-app-r3")
    assert finish.outcome is Outcome.FAILED and "repositories/other not found" in build.status_detail


def test_the_build_account_reads_the_connection_only_with_deploys_grant(tmp_path, monkeypatch, private_repo):
    """With IAM enforced from deploy/'s plan, the pipeline account's build fetches the connected repository;
    without roles/cloudbuild.readTokenAccessor on the connection the fetch is denied, naming the permission."""
    from deploy.config import DeployConfig
    from deploy.iam_policy import policies
    from deploy.model import build_plan
    from local.standin.identity import mint_key
    from shared.adapters.executors import RetryPolicy, build_executors

    pipeline_sa = f"pipeline@{PROJECT}.iam.gserviceaccount.com"
    runtime = f"release-runtime@{PROJECT}.iam.gserviceaccount.com"
    flow = pipeline({"connected_repository": CONNECTED}, tmp_path / "VERSION")
    config = DeployConfig(settings=Settings(project=PROJECT), pipeline=flow, github_repository="acme/app",
                          project_number="123456789012", pipeline_sa_id="pipeline",
                          app_service_account_list=(f"app@{PROJECT}.iam.gserviceaccount.com",))
    found = policies(build_plan(config))
    connection = CONNECTED.rsplit("/repositories/", 1)[0]
    readers = tuple(m.removeprefix("serviceAccount:")
                    for m in found.connections[connection]["roles/cloudbuild.readTokenAccessor"])
    assert readers == (pipeline_sa,)
    keys = tmp_path / "keys"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(mint_key(keys, runtime)))
    cfg = StandInConfig(project=PROJECT, project_number="123456789012", log_dir=tmp_path / "logs", key_dir=keys)
    with StandIn(cfg) as running:
        running.set_iam_policy(found.project)
        running.enforce_iam(found.accounts, found.custom_roles)
        settings = Settings(project=PROJECT, cloud_build_endpoint=running.endpoint, pipeline_service_account=pipeline_sa)
        executor = build_executors(settings, retry=RetryPolicy(initial_s=0.01, maximum_s=0.05, timeout_s=2))["build"]
        for granted in (readers, ()):
            running.connect_repository(CONNECTED, str(private_repo[0]), readers=granted)
            release = f"acme-app-iam{len(granted)}"
            command = StartStage(release, "unit", f"{release}.unit.a1", 1, "build",
                                 {"tag": "v1.0.0", "version": "1.0.0", "commit": private_repo[1], "repo": "acme/app"})
            build = running.finished_build(executor.start(flow, flow.stage("unit"), command).handle["build_id"])
            if granted:
                assert build.status.name == "SUCCESS", build.status_detail
            else:
                assert build.status.name == "FAILURE"
                assert "Permission 'cloudbuild.repositories.accessReadToken' denied" in build.status_detail
