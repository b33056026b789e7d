"""The probe queue's grants, shown: with deploy/'s bindings the runtime account schedules a
probe whose task carries the invoker account's OIDC token; without the enqueuer role on the
queue, or without actAs on the invoker account, Cloud Tasks answers PERMISSION_DENIED naming
the permission, which the adapter turns into our ExecutorError naming it (the stand-in enforces what deploy/ grants, as for the other APIs)."""
from __future__ import annotations

import time

import pytest

from deploy.config import DeployConfig
from deploy.iam_policy import policies
from deploy.model import build_plan
from local.standin.identity import mint_key
from local.standin.server import StandIn, StandInConfig
from shared.adapters.cloud_tasks import CloudTasksScheduler
from shared.app.config import Settings
from shared.domain.approval_tokens import Keyring
from shared.domain.errors import ExecutorError
from shared.domain.probes import first_probe_task
from tests.integration.test_iam_least_privilege import NUMBER, PIPELINE, PROJECT, REGION, RUNTIME

INVOKER = f"release-invoker@{PROJECT}.iam.gserviceaccount.com"
QUEUE = f"projects/{PROJECT}/locations/{REGION}/queues/release-probes"
KEYS = Keyring.from_setting("k1:probe-iam-test-secret-of-32-bytes-or-more")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(mint_key(keys, RUNTIME)))
    cfg = StandInConfig(project=PROJECT, region=REGION, project_number=NUMBER, log_dir=tmp_path / "logs",
                        key_dir=keys, task_queues=(QUEUE,))
    config = DeployConfig(settings=Settings(project=PROJECT, region=REGION), pipeline=PIPELINE,
                          github_repository="acme/app", project_number=NUMBER, pipeline_sa_id="pipeline")
    with StandIn(cfg) as running:
        found = policies(build_plan(config))
        running.set_iam_policy(found.project)
        settings = Settings(project=PROJECT, region=REGION, cloud_tasks_endpoint=running.endpoint,
                            probe_url="http://127.0.0.1:9/", probe_service_account=INVOKER)
        yield running, found, CloudTasksScheduler(settings, keyring=KEYS)


def task(run: str):
    return first_probe_task(release_id="r", stage="migrate", stage_run_id=f"r.migrate.{run}", kind="job",
                            pipeline_digest="d" * 64, now=time.time(), timeout_s=60, handle={})


def test_deploys_bindings_let_the_runtime_account_schedule_probes_as_the_invoker(setup):
    standin, found, scheduler = setup
    assert found.queues == {"release-probes": {"roles/cloudtasks.enqueuer": [f"serviceAccount:{RUNTIME}"]}}
    standin.enforce_iam(found.accounts, found.custom_roles, found.queues)
    assert scheduler.schedule(task("a1"), time.time() + 60) is True


def test_without_the_enqueuer_role_on_the_queue_scheduling_is_denied(setup):
    standin, found, scheduler = setup
    standin.enforce_iam(found.accounts, found.custom_roles, {})
    with pytest.raises(ExecutorError, match="scheduling probe .*: missing permission cloudtasks.tasks.create"):
        scheduler.schedule(task("a2"), time.time() + 60)


def test_without_act_as_on_the_invoker_account_a_task_with_its_token_is_denied(setup):
    standin, found, scheduler = setup
    accounts = {account: roles for account, roles in found.accounts.items() if account != INVOKER}
    standin.enforce_iam(accounts, found.custom_roles, found.queues)
    with pytest.raises(ExecutorError, match="missing permission iam.serviceAccounts.actAs"):
        scheduler.schedule(task("a3"), time.time() + 60)
