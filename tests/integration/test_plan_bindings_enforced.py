"""Secrets and invoker bindings of deploy/'s plan, enforced as on GCP.

The Secret Manager stand-in through the real google-cloud-secret-manager client: its documented
errors, and a function's secret references resolved as the function's account (the local applier
does this when it starts a function, as Cloud Run does when a revision deploys), denied naming
``secretmanager.versions.access`` without the plan's binding on that secret. And Cloud Run's
invoker check in front of a private function (local/invoker_front.py): the plan's run.invoker
bindings let the invoker account reach probe and a listed operator reach operator, nobody else."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from google.api_core import exceptions as gexc
from google.cloud import secretmanager_v1 as sm

from deploy.config import DeployConfig
from deploy.model import build_plan
from local import apply_plan
from local.emulators import free_port
from local.invoker_front import InvokerFront
from local.standin.identity import mint_key
from local.standin.server import StandIn, StandInConfig
from local.token_issuer import LocalTokenIssuer
from shared.app.config import Settings
from shared.domain.errors import ConfigError
from tests.integration.test_iam_least_privilege import APP_SA, NUMBER, PIPELINE, PROJECT, REGION, RUNTIME

OPERATOR = "ops@example.com"


def plan_config(**settings) -> DeployConfig:
    return DeployConfig(settings=Settings(project=PROJECT, region=REGION, operators=OPERATOR, **settings),
                        pipeline=PIPELINE, github_repository="acme/app", project_number=NUMBER,
                        pipeline_sa_id="pipeline", app_service_account_list=(APP_SA,))


@pytest.fixture
def world(tmp_path):
    """The stand-in with the plan's secrets (a version each) and secret policies, IAM enforced."""
    keys = tmp_path / "keys"
    cfg = StandInConfig(project=PROJECT, region=REGION, project_number=NUMBER, log_dir=tmp_path / "logs", key_dir=keys)
    plan = build_plan(plan_config())
    with StandIn(cfg) as running:
        for resource in apply_plan.resources(plan, "secret"):
            running.secrets.create_secret(sm.CreateSecretRequest(parent=f"projects/{PROJECT}", secret_id=resource.name))
            running.secrets.add_secret_version(sm.AddSecretVersionRequest(
                parent=f"projects/{PROJECT}/secrets/{resource.name}", payload=sm.SecretPayload(data=b"v1")))
        for secret, bindings in apply_plan.secret_bindings(plan).items():
            running.secrets.set_bindings(secret, bindings)
        running.enforce_iam()
        yield running, plan, keys


def test_secret_manager_answers_as_documented(world):
    standin, _, keys = world
    owner = f"owner@{PROJECT}.iam.gserviceaccount.com"
    standin.set_iam_policy({"roles/owner": [f"serviceAccount:{owner}"]})
    client = apply_plan.secret_client(standin.endpoint, mint_key(keys, owner))
    name = f"projects/{PROJECT}/secrets/release-approval-keys"
    with pytest.raises(gexc.NotFound, match="not found"):
        client.access_secret_version(name=f"projects/{PROJECT}/secrets/nope/versions/latest", retry=None)
    with pytest.raises(gexc.NotFound, match="versions/7"):
        client.access_secret_version(name=f"{name}/versions/7", retry=None)
    client.add_secret_version(parent=name, payload={"data": b"v2"})
    assert client.access_secret_version(name=f"{name}/versions/latest").payload.data == b"v2"
    client.disable_secret_version(name=f"{name}/versions/2")
    with pytest.raises(gexc.FailedPrecondition, match="DISABLED"):  # latest is the newest version, even disabled
        client.access_secret_version(name=f"{name}/versions/latest", retry=None)
    assert client.access_secret_version(name=f"{name}/versions/1").payload.data == b"v1"
    client.destroy_secret_version(name=f"{name}/versions/1")
    with pytest.raises(gexc.FailedPrecondition, match="DESTROYED"):
        client.access_secret_version(name=f"{name}/versions/1", retry=None)
    stranger = apply_plan.secret_client(standin.endpoint, mint_key(keys, f"stranger@{PROJECT}.iam.gserviceaccount.com"))
    with pytest.raises(gexc.PermissionDenied, match="'secretmanager.versions.access' denied"):
        stranger.access_secret_version(name=f"{name}/versions/latest", retry=None)


def test_a_function_reads_its_secrets_as_its_account_and_only_with_the_plans_binding(world):
    standin, plan, keys = world
    key = mint_key(keys, RUNTIME)
    dispatch = next(fn for fn in apply_plan.deployed_functions(plan) if fn.name == "dispatch")
    assert apply_plan.resolve_secrets(dispatch, PROJECT, standin.endpoint, key) == {"RELEASE_APPROVAL_KEYS": "v1"}
    bindings = apply_plan.secret_bindings(plan)["release-approval-keys"]
    bindings["roles/secretmanager.secretAccessor"].remove(f"serviceAccount:{RUNTIME}")
    standin.secrets.set_bindings("release-approval-keys", bindings)
    with pytest.raises(ConfigError, match=r"function dispatch does not start: secret release-approval-keys .*"
                                          r"'secretmanager\.versions\.access' denied"):
        apply_plan.resolve_secrets(dispatch, PROJECT, standin.endpoint, key)


@pytest.fixture
def backend():
    class Ok(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("function, caller", [("probe", f"release-invoker@{PROJECT}.iam.gserviceaccount.com"),
                                              ("operator", OPERATOR)])
def test_a_private_function_admits_exactly_the_plans_invokers(backend, function, caller):
    plan = build_plan(plan_config())
    issuer = LocalTokenIssuer().start()
    try:
        members = apply_plan.invokers(plan, function)
        front = InvokerFront(function, free_port(), backend, members, issuer.certs_url, issuer.issuer)

        def call(email: str) -> requests.Response:
            token = issuer.mint(email, front.url)
            return requests.post(front.url, data=b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=30)

        assert call(caller).status_code == 200
        assert call(RUNTIME).status_code == 403
        front.invokers = members - {next(m for m in members if m.endswith(caller))}  # the binding removed
        refused = call(caller)
        assert refused.status_code == 403 and "run.routes.invoke" in refused.text
        front.stop()
    finally:
        issuer.stop()
