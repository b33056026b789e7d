"""The stand-in refuses what Cloud Build and Cloud Run refuse, with the same status, through
the real client libraries (each rule's documentation is cited where the stand-in enforces it)."""
from __future__ import annotations

import os
import re
import sys
import time

import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1

from local.standin.server import StandIn, StandInConfig
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings

PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/europe-west3"
SA = f"projects/{PROJECT}/serviceAccounts/pipeline@{PROJECT}.iam.gserviceaccount.com"
Status = cloudbuild_v1.Build.Status
Logging = cloudbuild_v1.BuildOptions.LoggingMode


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    cfg = StandInConfig(project=PROJECT, workspace=REPO_ROOT, local_images=frozenset({"local"}),
                        log_dir=tmp_path_factory.mktemp("standin-rules"))
    with StandIn(cfg) as running:
        yield running


@pytest.fixture(scope="module")
def settings(standin) -> Settings:
    return Settings(project=PROJECT, cloud_build_endpoint=standin.endpoint, cloud_run_endpoint=standin.endpoint)


@pytest.fixture(scope="module")
def builds(settings):
    return gcp_clients.cloud_build(settings)


def step(code: str = "pass", **extra) -> cloudbuild_v1.BuildStep:
    return cloudbuild_v1.BuildStep(name="local", entrypoint=sys.executable, args=["-c", code], **extra)


def create(builds, **fields) -> cloudbuild_v1.Build:
    fields.setdefault("steps", [step()])
    return builds.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(**fields)).metadata.build


def wait(builds, build_id: str, timeout_s: float = 30) -> cloudbuild_v1.Build:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        build = builds.get_build(project_id=PROJECT, id=build_id)
        if build.status not in (Status.QUEUED, Status.WORKING):
            return build
        time.sleep(0.05)
    raise AssertionError(f"build {build_id} did not end within {timeout_s}s")


@pytest.mark.parametrize("fields, message", [
    ({"substitutions": {"CLOUDSQL_INSTANCE": "p:r:i"}, "steps": [step("print('${CLOUDSQL_INSTANCE}')")]},
     'substitution key "CLOUDSQL_INSTANCE" does not respect format'),
    ({"steps": [step("print('${CLOUDSQL_INSTANCE}')")]},
     'key in the template "CLOUDSQL_INSTANCE" is not a valid built-in substitution'),
    ({"steps": [step("print('${_INSTANCE}')")]}, 'key in the template "_INSTANCE" is not matched'),
    ({"substitutions": {"_UNUSED": "x"}}, 'key "_UNUSED" in the substitution data is not matched in the template'),
    ({"steps": [step(secret_env=["DATABASE_URL"])]}, 'secretEnv "DATABASE_URL", which is not defined in availableSecrets'),
    ({"service_account": SA}, "if 'build.service_account' is specified"),
    # Build.service_account: "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}", ACCOUNT an e-mail or uniqueId
    *[({"service_account": bad, "options": cloudbuild_v1.BuildOptions(logging=Logging.CLOUD_LOGGING_ONLY)},
       "must be of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}")
      for bad in (f"pipeline@{PROJECT}.iam.gserviceaccount.com", f"serviceAccount:pipeline@{PROJECT}.iam.gserviceaccount.com",
                  f"projects/{PROJECT}/serviceAccounts/pipeline", f"projects/{PROJECT}/serviceAccounts/",
                  f"projects/{PROJECT}/serviceAccounts/a@b.c/keys/1", f"projects/{PROJECT}/serviceaccounts/a@{PROJECT}.iam.gserviceaccount.com")],
    ({"tags": ["release/v1 2"]}, 'invalid build tag "release/v1 2"'),
    ({"tags": ["-leading-dash"]}, "invalid build tag"),
    ({"tags": ["x" * 129]}, "invalid build tag"),
])
def test_create_build_refuses_what_cloud_build_refuses(builds, fields, message):
    with pytest.raises(exceptions.InvalidArgument, match=re.escape(message)):
        create(builds, **fields)


def test_what_cloud_build_accepts_passes(builds):
    build = create(
        builds, tags=["rel-acme-app-1.2", "run-r.unit.a1", "stage_unit"],
        substitutions={"_UNUSED": "x"}, options=cloudbuild_v1.BuildOptions(
            substitution_option=cloudbuild_v1.BuildOptions.SubstitutionOption.ALLOW_LOOSE, logging=Logging.CLOUD_LOGGING_ONLY),
        service_account=SA,
        available_secrets=cloudbuild_v1.Secrets(secret_manager=[cloudbuild_v1.SecretManagerSecret(
            env="DATABASE_URL", version_name=f"projects/{PROJECT}/secrets/db/versions/latest")]),
        steps=[step("import sys; sys.exit(0 if '$$HOME' == '$' + 'HOME' else 1)", secret_env=["DATABASE_URL"])])
    assert wait(builds, build.id).status == Status.SUCCESS


def test_a_service_account_named_by_its_unique_id_is_accepted(builds):
    build = create(builds, service_account=f"projects/{PROJECT}/serviceAccounts/112233445566778899001",
                   options=cloudbuild_v1.BuildOptions(logging=Logging.CLOUD_LOGGING_ONLY))
    assert build.service_account.endswith("/112233445566778899001")
    # The stand-in knows accounts (their keys) by e-mail only, so it cannot run such a build; it says so.
    assert "knows service accounts by e-mail only" in wait(builds, build.id).status_detail


def test_a_build_exists_only_in_the_location_it_was_created_in(builds):
    """projects.locations.builds.get: the legacy path projects/{projectId}/builds/{id} "only gets
    builds in the "global" region"; a regional build is found under its own location only."""
    regional = builds.create_build(parent=PARENT, project_id=PROJECT, build=cloudbuild_v1.Build(
        steps=[step()], tags=["where-a"])).metadata.build
    assert regional.name == f"{PARENT}/builds/{regional.id}"
    assert builds.get_build(name=regional.name).id == regional.id
    elsewhere = f"projects/{PROJECT}/locations/us-central1"
    for request in ({"name": f"{elsewhere}/builds/{regional.id}"}, {"project_id": PROJECT, "id": regional.id},
                    {"name": f"projects/other-project/locations/europe-west3/builds/{regional.id}"}):
        with pytest.raises(exceptions.NotFound):
            builds.get_build(request=request, retry=None)
        with pytest.raises(exceptions.NotFound):
            builds.cancel_build(request=request, retry=None)
    tagged = 'tags="where-a"'
    listed = builds.list_builds(request={"parent": PARENT, "project_id": PROJECT, "filter": tagged})
    assert [b.id for b in listed] == [regional.id]
    assert list(builds.list_builds(request={"parent": elsewhere, "project_id": PROJECT, "filter": tagged})) == []
    assert list(builds.list_builds(project_id=PROJECT, filter=tagged)) == []  # the legacy path: "global" only
    with pytest.raises(exceptions.InvalidArgument):
        builds.get_build(name=f"{PARENT}/builds", retry=None)


def test_substitutions_are_filled_in_steps(builds, tmp_path):
    out = tmp_path / "out.txt"
    build = create(builds, substitutions={"_INSTANCE": "p:r:i"}, steps=[
        step(f"open({str(out)!r}, 'w').write('${{_INSTANCE}} $PROJECT_ID $BUILD_ID')")])
    assert wait(builds, build.id).status == Status.SUCCESS
    assert out.read_text() == f"p:r:i {PROJECT} {build.id}"


def test_a_build_without_source_starts_in_an_empty_workspace(builds, tmp_path):
    out = tmp_path / "listing.txt"
    build = create(builds, steps=[step(f"import os; open({str(out)!r}, 'w').write(repr(os.listdir('.')))")])
    assert wait(builds, build.id).status == Status.SUCCESS
    assert out.read_text() == "[]"
    failing = create(builds, steps=[step("import pathlib; pathlib.Path('sample_app/rag_schema.sql').read_text()")])
    assert wait(builds, failing.id).status == Status.FAILURE  # the repository's files are not there


def test_git_source_is_checked_out_at_its_revision(builds, tmp_path):
    out = tmp_path / "schema.sql"
    source = cloudbuild_v1.Source(git_source=cloudbuild_v1.GitSource(url=str(REPO_ROOT), revision="HEAD"))
    build = create(builds, source=source, steps=[step(
        f"import shutil; shutil.copy('sample_app/rag_schema.sql', {str(out)!r})")])
    assert wait(builds, build.id).status == Status.SUCCESS
    assert out.read_text() == (REPO_ROOT / "sample_app" / "rag_schema.sql").read_text()
    missing = create(builds, source=cloudbuild_v1.Source(git_source=cloudbuild_v1.GitSource(
        url=str(REPO_ROOT), revision="0" * 40)))
    ended = wait(builds, missing.id)
    assert ended.status == Status.FAILURE and "failed to fetch source" in ended.status_detail


def test_an_image_is_pushed_only_if_this_build_built_it(builds, standin):
    image = "europe-west3-docker.pkg.dev/local-project/app/web:v1.0.0-aaaaaaa"
    standin.set_outcome("build", "run-docker", "SUCCESS")
    built = create(builds, tags=["run-docker-build"], images=[image], steps=[
        cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["build", "-t", image, "."])])
    ended = wait(builds, built.id)
    assert ended.status == Status.SUCCESS and ended.results.images[0].name == image
    assert ended.results.images[0].digest.startswith("sha256:")
    # A second build names the image without building it: its Docker cache is empty.
    not_built = wait(builds, create(builds, tags=["run-docker-images"], images=[image]).id)
    assert not_built.status == Status.FAILURE and "failed to push" in not_built.status_detail
    push = wait(builds, create(builds, tags=["run-docker-push"], steps=[
        cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=["push", image])]).id)
    assert push.status == Status.FAILURE and "does not exist locally" in push.status_detail
    pushed = [i for i in standin.docker_images if "/web@" in i.name]
    assert len(pushed) == 1  # only the build that built it pushed


def test_a_step_that_never_exits_ends_the_build_in_timeout(builds, standin):
    local = wait(builds, create(builds, timeout={"seconds": 1}, steps=[step("import time; time.sleep(60)")]).id)
    assert local.status == Status.TIMEOUT
    # The Cloud SQL proxy of main's stage 6, as a background step that never exits.
    standin.set_outcome("build", "run-proxy", "HANG")
    proxy = wait(builds, create(builds, tags=["run-proxy"], timeout={"seconds": 1}, steps=[
        cloudbuild_v1.BuildStep(name="gcr.io/cloud-sql-connectors/cloud-sql-proxy", args=["--port=5432", "p:r:i"],
                                wait_for=["-"])]).id)
    assert proxy.status == Status.TIMEOUT


def service_template(labels=None, revision="") -> run_v2.RevisionTemplate:
    return run_v2.RevisionTemplate(revision=revision, labels=labels or {},
                                   containers=[run_v2.Container(image="local", env=[run_v2.EnvVar(name="VERSION", value="1")])])


@pytest.mark.parametrize("template, message", [
    (service_template(labels={"version": "1.2.3"}), "label 'version'='1.2.3' is invalid"),
    (service_template(labels={"commit": "ABC"}), "is invalid"),
    (service_template(labels={"version": "x" * 64}), "is invalid"),
    (service_template(revision="other-r1"), "Revision name must be prefixed by the name of the enclosing Service"),
])
def test_cloud_run_refuses_bad_labels_and_revision_names(settings, template, message):
    services = gcp_clients.run_services(settings)
    with pytest.raises(exceptions.InvalidArgument, match=message):
        services.create_service(parent=PARENT, service=run_v2.Service(template=template), service_id="rules-web")


def test_cloud_run_accepts_valid_labels_and_a_prefixed_revision(settings):
    services = gcp_clients.run_services(settings)
    created = services.create_service(parent=PARENT, service_id="rules-ok", service=run_v2.Service(
        template=service_template(labels={"version": "1-2-3", "commit": "abc_1"}, revision="rules-ok-r1"))).result(60)
    assert created.latest_ready_revision.endswith("/revisions/rules-ok-r1")
    assert os.path.basename(created.latest_ready_revision) == "rules-ok-r1"
