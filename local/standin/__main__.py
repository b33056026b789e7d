"""Run the stand-in as a process: ``python -m local.standin --config FILE``.

FILE (JSON or YAML) holds the StandInConfig fields plus what to create at start:

    project: local-project
    region: europe-west3
    workspace: .                      # relative paths are relative to the config file
    local_images: [local]
    pubsub_emulator_host: 127.0.0.1:8085
    builds_topic: cloud-builds
    log_dir: .local-stack/logs/standin
    port: 0
    log_port: 0                       # the log files are served on http://127.0.0.1:log_port/logs/...
    jobs:     [{name: noesis2-migrate, image: local, command: [python, -m, sample_app.migrate], env: {DATA_DIR: ...},
                service_account: app@local-project.iam.gserviceaccount.com}]
    services: [{name: noesis2-web, image: local, env: {VERSION: "0.0.0"}, labels: {version: "0.0.0"},
                service_account: app@local-project.iam.gserviceaccount.com}]
    iam_bindings: {roles/run.developer: [serviceAccount:deployer@local-project.iam.gserviceaccount.com]}
    enforce_iam: true                 # after seeding: every call needs a token of a key in key_dir
    key_dir: .local-stack/keys
    iam_account_bindings: {ACCOUNT: {roles/iam.serviceAccountUser: [serviceAccount:...]}}
    custom_roles: {projects/local-project/roles/x: [resourcemanager.projects.getIamPolicy]}
    outcomes: [{kind: build, match: rel-, outcome: SUCCESS, detail: ""}]
    queues:   [{name: projects/P/locations/L/queues/Q, max_attempts: 20, min_backoff_s: 1, max_backoff_s: 10,
                max_concurrent_dispatches: 100}]
    secrets:  {release-webhook-secret: [first value, second value]}   # versions, oldest first
    iam_secret_bindings: {SECRET: {roles/secretmanager.secretAccessor: [serviceAccount:...]}}

Prints ``STANDIN_READY <endpoint>`` once serving; runs until SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from local.standin.server import StandIn, StandInConfig


def load_config(path: Path) -> tuple[StandInConfig, dict[str, Any]]:
    raw = yaml.safe_load(path.read_text()) or {}  # YAML is a superset of JSON
    base = path.resolve().parent

    def resolve(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else base / p

    config = StandInConfig(
        project=raw.get("project", "local-project"),
        region=raw.get("region", "europe-west3"),
        workspace=resolve(raw.get("workspace", ".")),
        local_images=frozenset(raw.get("local_images", ["local"])),
        pubsub_emulator_host=raw.get("pubsub_emulator_host") or None,
        builds_topic=raw.get("builds_topic", "cloud-builds"),
        log_dir=resolve(raw.get("log_dir", "standin-logs")),
        port=int(raw.get("port", 0)),
        log_port=int(raw.get("log_port", 0)),
        **{key: float(raw[key]) for key in ("metric_sample_s", "metric_delay_s", "log_delay_s") if key in raw},
        task_queues=tuple(raw.get("task_queues", ())),
        task_dispatch_delay_s=float(raw.get("task_dispatch_delay_s", 0.0)),
        id_token_url=raw.get("id_token_url", ""),
        project_number=str(raw.get("project_number", "123456789012")),
        key_dir=resolve(raw.get("key_dir", "standin-keys")),
    )
    return config, raw


def seed(standin: StandIn, raw: dict[str, Any]) -> None:
    """Create the configured jobs and services through the stand-in's own gRPC API."""
    from google.cloud import run_v2

    from shared.app.config import Settings
    from shared.adapters.gcp_clients import run_jobs, run_services

    cfg = standin.config
    settings = Settings(project=cfg.project, region=cfg.region, cloud_run_endpoint=standin.endpoint)
    parent = f"projects/{cfg.project}/locations/{cfg.region}"
    for rule in raw.get("outcomes", []):
        standin.set_outcome(rule["kind"], rule["match"], rule["outcome"], rule.get("detail", ""))
    if raw.get("iam_bindings"):
        standin.set_iam_policy(raw["iam_bindings"])
    for spec in raw.get("jobs", []):
        container = _container(run_v2, spec)
        job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(
            containers=[container], service_account=spec.get("service_account", ""))))
        run_jobs(settings).create_job(parent=parent, job=job, job_id=spec["name"]).result(30)
    if raw.get("queues"):
        from google.cloud import tasks_v2
        from google.protobuf import duration_pb2

        from shared.adapters.gcp_clients import cloud_tasks

        tasks = cloud_tasks(Settings(project=cfg.project, region=cfg.region, cloud_tasks_endpoint=standin.endpoint))
        for q in raw["queues"]:
            queue = tasks_v2.Queue(name=q["name"], rate_limits=tasks_v2.RateLimits(
                max_concurrent_dispatches=q["max_concurrent_dispatches"]), retry_config=tasks_v2.RetryConfig(
                max_attempts=q["max_attempts"], min_backoff=duration_pb2.Duration(seconds=int(q["min_backoff_s"])),
                max_backoff=duration_pb2.Duration(seconds=int(q["max_backoff_s"]))))
            tasks.create_queue(parent=q["name"].split("/queues/")[0], queue=queue)
    for secret_id, versions in (raw.get("secrets") or {}).items():
        from google.cloud import secretmanager_v1 as sm

        project = f"projects/{cfg.project}"
        standin.secrets.create_secret(sm.CreateSecretRequest(parent=project, secret_id=secret_id, secret=sm.Secret(
            replication=sm.Replication(automatic=sm.Replication.Automatic()))))
        for value in versions:
            standin.secrets.add_secret_version(sm.AddSecretVersionRequest(
                parent=f"{project}/secrets/{secret_id}", payload=sm.SecretPayload(data=value.encode())))
    for secret_id, bindings in (raw.get("iam_secret_bindings") or {}).items():
        standin.secrets.set_bindings(secret_id, bindings)
    for spec in raw.get("services", []):
        template = run_v2.RevisionTemplate(containers=[_container(run_v2, spec)], labels=spec.get("labels", {}),
                                           service_account=spec.get("service_account", ""))
        run_services(settings).create_service(
            parent=parent, service=run_v2.Service(template=template), service_id=spec["name"]
        ).result(60)


def _container(run_v2: Any, spec: dict[str, Any]) -> Any:
    return run_v2.Container(
        image=spec.get("image", "local"), command=spec.get("command", []), args=spec.get("args", []),
        env=[run_v2.EnvVar(name=k, value=str(v)) for k, v in spec.get("env", {}).items()],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.standin")
    parser.add_argument("--config", required=True, type=Path, help="JSON or YAML stand-in config")
    args = parser.parse_args(argv)
    config, raw = load_config(args.config)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    standin = StandIn(config).start()
    try:
        seed(standin, raw)  # as the project's owner, before IAM is enforced
        if raw.get("enforce_iam"):
            standin.enforce_iam(raw.get("iam_account_bindings") or {}, raw.get("custom_roles") or {},
                                raw.get("iam_queue_bindings") or {}, raw.get("iam_repository_bindings") or {})
        print(f"STANDIN_READY {standin.endpoint}", flush=True)
        stopping.wait()
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
