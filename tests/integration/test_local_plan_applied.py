"""The local stack is a deployment of deploy/'s plan: read the running world back through the
APIs (Pub/Sub, the stand-in's IAM, Cloud Tasks and Secret Manager, each function process) and
compare it with ``build_plan``'s own data (deploy/model.py's functions, environment, bindings),
for the sample and the noesis2 configuration. And what the plan would refuse on GCP stops the
stack: an entry point the assembled main.py lacks, a secret without an enabled version."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from google.cloud import pubsub_v1

import deploy.source
from deploy.iam_policy import policies
from deploy.model import MAX_DELIVERY_ATTEMPTS, PUSH_ACK_DEADLINE_S, build_plan, function_env, functions
from local import apply_plan
from local.stack import LOCAL_OWNER, PROJECT, LocalStack
from shared.adapters import gcp_clients
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ConfigError


def _stack(emulators, workdir: Path, **kwargs) -> LocalStack:
    return LocalStack(workdir=workdir, reuse_emulators={"firestore": emulators["firestore"],
                                                        "pubsub": emulators["pubsub"]}, **kwargs)


def _process(stack: LocalStack, name: str) -> tuple[dict[str, str], list[str], Path]:
    pid = stack.processes[name].pid
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    return env, argv, Path(os.readlink(f"/proc/{pid}/cwd"))


@pytest.mark.parametrize("pipeline", ["sample.yaml", "noesis2.yaml"])
def test_the_running_local_world_is_the_plan(emulators, tmp_path, pipeline, monkeypatch):
    with _stack(emulators, tmp_path / "stack", pipeline_file=REPO_ROOT / "pipelines" / pipeline) as stack:
        config = stack.deploy_config()
        plan = build_plan(config)
        source = Path(config.source_dir)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(stack.workdir / "keys" / f"{LOCAL_OWNER}.json"))
        endpoint = stack.standin_endpoint

        # Functions: entry point, source directory, environment, secrets, identity.
        plan_env = function_env(config)
        for fn in functions(config):
            env, argv, cwd = _process(stack, fn.name)
            assert argv[argv.index("--target") + 1] == fn.entry_point
            assert argv[argv.index("--source") + 1] == str(source / "main.py") and cwd == source
            assert argv[argv.index("--signature-type") + 1] == ("cloudevent" if fn.trigger_topic else "http")
            assert (source / "functions" / "main.py").exists() and not (source / "shared" / "testing").exists()
            for key, value in plan_env.items():
                local = value.replace("/workspace", str(source))
                for name, url in stack.urls.items():
                    local = local.replace(config.function_url(name), url)
                assert env.get(key) == local, (fn.name, key)
            assert {k for k in env if k.startswith("RELEASE_") and k not in plan_env} <= {
                *apply_plan.ENDPOINT_SETTINGS, "RELEASE_OPERATOR_CERTS_URL", "RELEASE_OPERATOR_ISSUERS",
                *(var for var, _ in fn.secrets)}, fn.name
            for var, secret in fn.secrets:
                assert env[var] == stack.secret_values(config)[secret], (fn.name, var)
            assert Path(env["GOOGLE_APPLICATION_CREDENTIALS"]).name == f"{config.runtime_sa}.json"

        # Pub/Sub: every topic, and each trigger's push subscription with the plan's policy.
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        for topic in apply_plan.resources(plan, "topic"):
            publisher.get_topic(topic=publisher.topic_path(PROJECT, topic.name))
        for fn in functions(config):
            if not fn.trigger_topic:
                continue
            sub = subscriber.get_subscription(subscription=subscriber.subscription_path(PROJECT, f"eventarc-{fn.name}"))
            assert sub.topic == publisher.topic_path(PROJECT, fn.trigger_topic)
            assert sub.push_config.push_endpoint == stack.urls[fn.name] + "/"
            assert sub.ack_deadline_seconds == PUSH_ACK_DEADLINE_S
            if fn.retry and fn.trigger_topic != config.dead_letter_topic:
                assert sub.dead_letter_policy.dead_letter_topic == publisher.topic_path(PROJECT, config.dead_letter_topic)
                assert sub.dead_letter_policy.max_delivery_attempts == MAX_DELIVERY_ATTEMPTS
            else:
                assert not sub.dead_letter_policy.dead_letter_topic, fn.name
        hold = subscriber.get_subscription(subscription=subscriber.subscription_path(
            PROJECT, f"{config.dead_letter_topic}-hold"))
        assert hold.message_retention_duration.total_seconds() == 7 * 86400

        # IAM: the project policy is the plan's, plus the local owner; each secret's policy is the plan's.
        settings = Settings(project=PROJECT, iam_endpoint=endpoint, cloud_tasks_endpoint=endpoint)
        got = {b.role: sorted(b.members) for b in gcp_clients.projects(settings).get_iam_policy(
            resource=f"projects/{PROJECT}").bindings}
        want = {role: sorted(members) for role, members in policies(plan).project.items()}
        want["roles/owner"] = [f"serviceAccount:{LOCAL_OWNER}"]
        assert got == want
        secrets = apply_plan.secret_client(endpoint, stack.workdir / "keys" / f"{LOCAL_OWNER}.json")
        for secret in apply_plan.resources(plan, "secret"):
            path = f"projects/{PROJECT}/secrets/{secret.name}"
            got = {(b.role, m) for b in secrets.get_iam_policy(request={"resource": path}).bindings for m in b.members}
            assert got == {(b.role, b.member) for b in plan.bindings if b.scope == "secret" and b.target == secret.name}
            versions = list(secrets.list_secret_versions(parent=path))
            mounted = {s for fn in functions(config) for _, s in fn.secrets}
            assert bool(versions) == (secret.name in mounted), secret.name
        assert "release-smtp-password" not in {s for fn in functions(config) for _, s in fn.secrets}  # no SMTP login

        # Cloud Tasks: the plan's queue with its retry and rate settings.
        (queue_step,) = apply_plan.resources(plan, "tasks-queue")
        queue = gcp_clients.cloud_tasks(settings).get_queue(
            name=f"projects/{PROJECT}/locations/{config.region}/queues/{queue_step.name}")
        flags = dict(a[2:].split("=", 1) for a in queue_step.create if a.startswith("--") and "=" in a)
        assert queue.retry_config.max_attempts == int(flags["max-attempts"])
        assert queue.retry_config.min_backoff.total_seconds() == float(flags["min-backoff"].rstrip("s"))
        assert queue.retry_config.max_backoff.total_seconds() == float(flags["max-backoff"].rstrip("s"))
        assert queue.rate_limits.max_concurrent_dispatches == int(flags["max-concurrent-dispatches"])

        # Private HTTP functions: Cloud Run's invoker check, with the plan's run.invoker bindings.
        assert {f.function for f in stack.fronts} == {fn.name for fn in functions(config)
                                                      if not fn.public and not fn.trigger_topic} - {"dashboard"}
        probe = stack.urls["probe"]
        assert requests.post(probe, data=b"{}", timeout=60).status_code == 401
        token = stack.token_issuer.mint(config.runtime_sa, probe)  # valid, but not an invoker of probe
        answer = requests.post(probe, data=b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert answer.status_code == 403 and "run.routes.invoke" in answer.text
        token = stack.token_issuer.mint(config.invoker_sa, stack.urls["operator"])  # the wrong audience
        assert requests.post(probe, data=b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=60).status_code == 401
        token = stack.token_issuer.mint(config.invoker_sa, probe)
        answer = requests.post(probe, data=b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert answer.status_code not in (401, 403, 503)  # the function itself answered (the body is not signed)


def test_the_stack_does_not_start_without_an_entry_point_the_plan_deploys(emulators, tmp_path, monkeypatch):
    real = deploy.source.root_main
    monkeypatch.setattr(deploy.source, "root_main", lambda names: real(tuple(n for n in names if n != "probe")))
    with pytest.raises(ConfigError, match=r"function probe \(entry point probe\) did not start[\s\S]*'probe'"):
        _stack(emulators, tmp_path / "stack").start(log=lambda line: None)


def test_a_function_whose_secret_has_no_enabled_version_does_not_start(emulators, tmp_path, monkeypatch):
    monkeypatch.setattr(LocalStack, "secret_values", lambda self, config: {config.webhook_secret: "whsec"})
    with pytest.raises(ConfigError, match="function dispatch does not start: secret release-approval-keys "
                                          r"\(RELEASE_APPROVAL_KEYS, version latest\): Secret \[.*\] not found "
                                          "or has no versions"):
        _stack(emulators, tmp_path / "stack").start(log=lambda line: None)
