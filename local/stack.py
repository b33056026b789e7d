"""The whole product on one machine: emulators, stand-in, functions, real push subscriptions.

Every function runs in its own functions-framework process, exactly the entry
points that are deployed; Pub/Sub push subscriptions deliver to them as on GCP.
The stand-in answers the Cloud Build, Cloud Run and IAM APIs on loopback, and a
ticker replaces Cloud Scheduler's one-minute tick (faster, so the demo is short).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from google.api_core.exceptions import AlreadyExists, NotFound

from local.emulators import Emulator, free_port, start_emulator, wait_port
from local.token_issuer import LocalTokenIssuer
from shared.app.config import REPO_ROOT
from shared.domain.errors import ConfigError

PROJECT = "local-project"
REGION = "europe-west3"
PIPELINE_SA = f"pipeline@{PROJECT}.iam.gserviceaccount.com"
RUNTIME_SA = f"release-runtime@{PROJECT}.iam.gserviceaccount.com"
APP_SA = f"sample-app@{PROJECT}.iam.gserviceaccount.com"  # what the sample app's services run as
PROJECT_NUMBER = "123456789012"
BASE_VERSION = "0.9.0"

DEAD_LETTER_TOPIC = "pipeline-dead-letter"
# name: (target, signature type, topics pushed to it)
FUNCTIONS = {
    "on_push": ("on_push", "http", ()),
    "dispatch": ("dispatch", "cloudevent", ("pipeline-events", "cloud-builds")),
    "sweep": ("sweep", "cloudevent", ("pipeline-tick",)),
    "drain_dead_letters": ("drain_dead_letters", "cloudevent", (DEAD_LETTER_TOPIC,)),
    "on_approval": ("on_approval", "http", ()),
    "probe": ("probe", "http", ()),  # Cloud Tasks (the stand-in) calls it at each probe's time
    "dashboard": ("dashboard", "http", ()),
    "operator": ("operator", "http", ()),
}
# Who may use relctl against the local stack. The sample pipeline's approver is one, so the
# `relctl approve … --as approver@example.com` the demo prints works (relctl approve goes
# through the operator function, like every command that acts).
LOCAL_OPERATORS = ("operator@example.com", "qa@example.com", "approver@example.com")
TOPICS = ("pipeline-events", "cloud-builds", "release-updates", "pipeline-tick", DEAD_LETTER_TOPIC)
# As deploy/ sets it on dispatch's subscriptions: after this many failed deliveries Pub/Sub
# forwards the message to the dead-letter topic (the emulator honours it too).
DEAD_LETTER_POLICY = {"max_delivery_attempts": 5}


@dataclass
class LocalStack:
    workdir: Path = REPO_ROOT / ".local-stack"
    pipeline_file: Path = REPO_ROOT / "pipelines" / "sample.yaml"
    # More applications: pipeline files on_push also maps repositories to (RELEASE_PIPELINE_FILES).
    pipeline_files: tuple[Path, ...] = ()
    tick_every_s: float = 2.0
    # Cloud Tasks' dispatch latency on GCP, added by the stand-in (benchmarks set it).
    task_dispatch_delay_s: float = 0.0
    # Cloud Run's metric timing, shortened so a local release takes seconds: on GCP metrics are
    # sampled every 60 s and readable up to 180 s later (local/standin/monitoring_api.py).
    metric_sample_s: float = 2.0
    metric_delay_s: float = 3.0
    log_delay_s: float = 2.0
    webhook_secret: str = "local-demo-webhook-secret"
    approval_keys: str = "k1:local-demo-link-signing-key"
    smtp_port: int = 0
    # {"firestore": host, "pubsub": host} of emulators someone else runs (the test session).
    reuse_emulators: dict[str, str] | None = None
    emulators: list[Emulator] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    standin_endpoint: str = ""
    token_issuer: LocalTokenIssuer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    # -- lifecycle ------------------------------------------------------------
    def start(self, log=print) -> "LocalStack":
        try:
            self._start(log)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, log) -> None:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "logs").mkdir(parents=True)
        (self.workdir / "registry").mkdir()
        # The local registry's credentials: the push stage fails clearly without them.
        (self.workdir / "registry" / "credentials").write_text("local-demo\n")
        if not self.reuse_emulators:
            log("starting the Firestore and Pub/Sub emulators …")
            threads = [threading.Thread(target=self._start_emulator, args=(kind,)) for kind in ("firestore", "pubsub")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(self.emulators) != 2:
                raise ConfigError("an emulator did not start; see the logs in " + str(self.workdir / "logs"))
        # The Google clients of this process (demo, tests) find the emulators through these.
        os.environ.update(self.base_env())
        self._create_topics()
        log("starting the Cloud Build / Cloud Run stand-in …")
        self._start_standin()
        # Google's ID-token issuer, played locally: the operator function verifies its tokens.
        self.token_issuer = LocalTokenIssuer().start()
        log("starting the functions …")
        # Every URL first: functions link to each other (approval links, dashboard).
        self.urls = {name: f"http://127.0.0.1:{free_port()}" for name in FUNCTIONS}
        for name in FUNCTIONS:
            self._start_function(name)
        for name, proc in self.processes.items():
            if name in FUNCTIONS:
                port = int(self.urls[name].rsplit(":", 1)[1])
                wait_port("127.0.0.1", port, 60, proc, self.workdir / "logs" / f"{name}.log")
        self._create_push_subscriptions()
        threading.Thread(target=self._tick, daemon=True, name="ticker").start()

    def stop(self) -> None:
        self._stop.set()
        for proc in reversed(list(self.processes.values())):  # functions before the stand-in
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.processes.clear()
        for emulator in self.emulators:
            emulator.stop()
        self.emulators.clear()
        if self.token_issuer is not None:
            self.token_issuer.stop()
            self.token_issuer = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- configuration ----------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        hosts = dict(self.reuse_emulators or {e.name: e.host for e in self.emulators})
        return {
            "FIRESTORE_EMULATOR_HOST": hosts.get("firestore", ""),
            "PUBSUB_EMULATOR_HOST": hosts.get("pubsub", ""),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "RELEASE_PROJECT": PROJECT,
            "RELEASE_REGION": REGION,
            # Who calls the stand-in: the functions' runtime account (the demo and relctl too).
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.workdir / "keys" / f"{RUNTIME_SA}.json"),
        }

    def function_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.base_env())
        env.update({
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONPATH": str(REPO_ROOT),
            "SAMPLE_STACK_DIR": str(self.workdir),  # where the sample app's steps keep files
            "RELEASE_PIPELINE_FILE": str(self.pipeline_file),
            "RELEASE_PIPELINE_FILES": ";".join(str(p) for p in self.pipeline_files),
            "RELEASE_CLOUD_BUILD_ENDPOINT": self.standin_endpoint,
            "RELEASE_CLOUD_RUN_ENDPOINT": self.standin_endpoint,
            "RELEASE_IAM_ENDPOINT": self.standin_endpoint,
            "RELEASE_ARTIFACT_REGISTRY_ENDPOINT": self.standin_endpoint,
            "RELEASE_CLOUD_TASKS_ENDPOINT": self.standin_endpoint,
            "RELEASE_LOGGING_ENDPOINT": self.standin_endpoint,
            "RELEASE_MONITORING_ENDPOINT": self.standin_endpoint,
            "RELEASE_PROBE_URL": self.urls.get("probe", ""),
            "RELEASE_ARTIFACT_REGISTRY": "local",
            "RELEASE_WEBHOOK_SECRET": self.webhook_secret,
            "RELEASE_APPROVAL_KEYS": self.approval_keys,
            "RELEASE_APPROVAL_BASE_URL": self.urls.get("on_approval", ""),
            "RELEASE_PUBLIC_BASE_URL": self.urls.get("dashboard", ""),
            "RELEASE_PIPELINE_SERVICE_ACCOUNT": PIPELINE_SA,
            # The "GitHub" of the local stack: builds fetch the pushed commit from this checkout.
            "RELEASE_SOURCE_URL": str(REPO_ROOT),
            "RELEASE_SMTP_HOST": "127.0.0.1" if self.smtp_port else "",
            "RELEASE_SMTP_PORT": str(self.smtp_port or 25),
            "RELEASE_NOTIFY_EMAILS": "release-team@example.com",
            **self.operator_env(),
            "RELEASE_OPERATOR_CERTS_URL": self.token_issuer.certs_url if self.token_issuer else "",
            "RELEASE_OPERATOR_ISSUERS": self.token_issuer.issuer if self.token_issuer else "",
            "RELEASE_OPERATORS": ",".join(LOCAL_OPERATORS),
        })
        return env

    def operator_env(self) -> dict[str, str]:
        """What relctl needs to reach the operator function with a token of the local issuer."""
        url = self.urls.get("operator", "")
        return {"RELEASE_OPERATOR_URL": url, "RELEASE_OPERATOR_AUDIENCE": url,
                "RELEASE_OPERATOR_TOKEN_URL": self.token_issuer.token_url if self.token_issuer else "",
                "RELEASE_OPERATOR_EMAIL": LOCAL_OPERATORS[0]}

    def _start_emulator(self, kind: str) -> None:
        try:
            self.emulators.append(start_emulator(kind, PROJECT, self.workdir / "logs"))
        except ConfigError as exc:
            print(f"{kind} emulator: {exc}", file=sys.stderr)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.workdir / "logs" / f"{name}.log").open("w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        self.processes[name] = proc
        return proc

    def _start_standin(self) -> None:
        from local.standin.identity import mint_key

        policies = deploy_policies(self.pipeline_file)
        # The functions run as the runtime account, with a key the stand-in (as IAM) knows.
        mint_key(self.workdir / "keys", RUNTIME_SA)
        config = {
            "project": PROJECT, "region": REGION, "workspace": str(REPO_ROOT),
            "local_images": ["local", "local/sample-app"],
            "pubsub_emulator_host": self.base_env()["PUBSUB_EMULATOR_HOST"],
            "builds_topic": "cloud-builds", "log_dir": str(self.workdir / "logs" / "standin"),
            "task_queues": [f"projects/{PROJECT}/locations/{REGION}/queues/release-probes"],
            "task_dispatch_delay_s": self.task_dispatch_delay_s,
            "metric_sample_s": self.metric_sample_s, "metric_delay_s": self.metric_delay_s,
            "log_delay_s": self.log_delay_s,
            "iam_bindings": policies.project,
            "enforce_iam": True, "key_dir": str(self.workdir / "keys"),
            "iam_account_bindings": policies.accounts, "custom_roles": policies.custom_roles,
            "iam_queue_bindings": policies.queues,
            "project_number": PROJECT_NUMBER,
            "jobs": self._sample_jobs(),
            "services": [
                {"name": name, "image": f"local/sample-app:v{BASE_VERSION}-base",
                 "env": {"VERSION": BASE_VERSION, "WORK_MS": "50"}, "labels": {"version": BASE_VERSION.replace(".", "-"), "commit": "base"},
                 "service_account": APP_SA}  # a dedicated account, as deploy/ --check requires
                for name in ("sample-web-staging", "sample-web")
            ],
        }
        path = self.workdir / "standin.json"
        path.write_text(json.dumps(config, indent=2))
        env = self.function_env()
        proc = self._spawn("standin", [sys.executable, "-u", "-m", "local.standin", "--config", str(path)], env)
        log_path = self.workdir / "logs" / "standin.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log_path.read_text() if log_path.exists() else ""
            for line in text.splitlines():
                if line.startswith("STANDIN_READY "):
                    self.standin_endpoint = line.split()[1]
                    return
            if proc.poll() is not None:
                raise ConfigError(f"the stand-in exited: {text[-2000:]}")
            time.sleep(0.1)
        raise ConfigError("the stand-in did not get ready within 60 s")

    def _sample_jobs(self) -> list[dict]:
        data = self.workdir / "data"
        return [
            {"name": "sample-migrate-staging", "image": "local", "command": [sys.executable, "-m", "sample_app.migrate"],
             "env": {"DATA_DIR": str(data / "staging")}},
            {"name": "sample-ingestion-smoke", "image": "local", "command": [sys.executable, "-m", "local.sample_ci", "ingest"],
             "env": {"DATA_DIR": str(data / "staging")}},
            {"name": "sample-migrate-prod", "image": "local", "command": [sys.executable, "-m", "sample_app.migrate"],
             "env": {"DATA_DIR": str(data / "prod")}},
        ]

    def _start_function(self, name: str) -> None:
        target, signature, _ = FUNCTIONS[name]
        port = self.urls[name].rsplit(":", 1)[1]
        env = self.function_env()
        args = [str(Path(sys.executable).parent / "functions-framework"), "--target", target,
                "--source", str(REPO_ROOT / "functions" / "main.py"), "--signature-type", signature,
                "--host", "127.0.0.1", "--port", port]
        self._spawn(name, args, env)

    def _create_topics(self) -> None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        for topic in TOPICS:
            try:
                publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
            except AlreadyExists:
                pass  # a reused emulator: the topic stays, its subscriptions are made anew

    def _create_push_subscriptions(self) -> None:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        for name, (_, _, topics) in FUNCTIONS.items():
            for topic in topics:
                path = subscriber.subscription_path(PROJECT, f"{topic}-to-{name}")
                try:
                    subscriber.delete_subscription(subscription=path)
                except NotFound:
                    pass
                request = {
                    "name": path,
                    "topic": subscriber.topic_path(PROJECT, topic),
                    "push_config": {"push_endpoint": self.urls[name] + "/"},
                    "ack_deadline_seconds": 60,
                }
                if name == "dispatch":
                    request["dead_letter_policy"] = {**DEAD_LETTER_POLICY,
                                                     "dead_letter_topic": subscriber.topic_path(PROJECT, DEAD_LETTER_TOPIC)}
                subscriber.create_subscription(request=request)

    def _tick(self) -> None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(PROJECT, "pipeline-tick")
        while not self._stop.wait(self.tick_every_s):
            try:
                publisher.publish(topic, b"{}").result(10)
            except Exception as exc:  # the stack may be shutting down
                if not self._stop.is_set():
                    print(f"ticker: {exc}", file=sys.stderr)


def deploy_policies(pipeline_file: Path):
    """The IAM policies deploy/ would leave in a project with this pipeline (what the stand-in enforces)."""
    from deploy.config import DeployConfig
    from deploy.iam_policy import policies
    from deploy.model import build_plan
    from shared.app.config import Settings
    from shared.domain.pipeline import load_pipeline

    pipeline = load_pipeline(pipeline_file)
    settings = Settings(project=PROJECT, region=REGION, pipeline_file=str(pipeline_file))
    config = DeployConfig(settings=settings, pipeline=pipeline, github_repository="example/sample-app",
                          project_number=PROJECT_NUMBER, pipeline_sa_id=PIPELINE_SA.split("@")[0],
                          app_service_account_list=(APP_SA,))
    return policies(build_plan(config))
