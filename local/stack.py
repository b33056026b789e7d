"""The whole product on one machine: deploy/'s plan, applied to emulators and the stand-in.

``build_plan`` (deploy/model.py) is built for a local project from this stack's settings,
then applied by local/apply_plan.py: the plan's topics and subscriptions in the Pub/Sub
emulator, its queue, secrets and IAM policies in the stand-in, and every function it deploys
in its own functions-framework process, from the source deploy/source.py assembles. The
stand-in answers the Google APIs on loopback, and a ticker replaces Cloud Scheduler's
one-minute tick (faster, so the demo is short).
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
from typing import Any

from deploy.config import DeployConfig, pipeline_account_id
from deploy.model import Plan, build_plan
from deploy.source import assemble_source
from local import apply_plan
from local.invoker_front import InvokerFront
from local.emulators import Emulator, free_port, start_emulator, wait_port
from local.token_issuer import LocalTokenIssuer
from shared.app.config import REPO_ROOT, Settings
from shared.domain.errors import ConfigError
from shared.domain.pipeline import load_pipeline

# What differs from a GCP project (local/apply_plan.py's LocalDifferences names the rest).
PROJECT = "local-project"
REGION = "europe-west3"
PROJECT_NUMBER = "123456789012"
APP_SA = f"sample-app@{PROJECT}.iam.gserviceaccount.com"  # what the sample app's services run as
BASE_VERSION = "0.9.0"
# Who may use relctl against the local stack. The sample pipeline's approver is one, so the
# `relctl approve … --as approver@example.com` the demo prints works (relctl approve goes
# through the operator function, like every command that acts).
LOCAL_OPERATORS = ("operator@example.com", "qa@example.com", "approver@example.com")
# Whoever runs `deploy --apply` owns the project on GCP; locally this account (tests read the applied
# world back as it). Its binding is the one grant in the stand-in that the plan does not make.
LOCAL_OWNER = f"local-owner@{PROJECT}.iam.gserviceaccount.com"
GITHUB_APP_ID, GITHUB_INSTALLATION = "271828", 31415  # the local GitHub App and its installation
# Private HTTP functions are reached through Cloud Run's invoker check (local/invoker_front.py), except:
OPEN_LOCALLY = {"dashboard": "the plan grants run.invoker on it to no one (the team is added by hand, "
                             "deploy/README.md); the browser tests open it without a token"}


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
    # The "GitHub" builds fetch pushed commits from: this checkout, unless a test names a clone.
    source_url: str = ""
    # RELEASE_COLLECTION_PREFIX: a test sharing the session's emulators keeps its releases apart.
    collection_prefix: str = ""
    emulators: list[Emulator] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)  # the plan's function name -> its loopback URL
    started_env: dict[str, dict[str, str]] = field(default_factory=dict)  # function -> its environment
    plan: Plan | None = None  # what was applied
    fronts: list[InvokerFront] = field(default_factory=list)
    standin_endpoint: str = ""
    token_issuer: LocalTokenIssuer | None = None
    # GitHub deployments and commit statuses: on, the plan names the App's secrets, the local operator
    # adds an App id and a fresh private key, and GitHub is local/github_api/standin.py (``self.github``).
    github_app: bool = False
    github: Any = None
    _github_key: str = field(default="", repr=False)
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
        config = self.deploy_config()
        plan = self.plan = build_plan(config)
        apply_plan.create_topics(plan)
        source_dir = assemble_source(config)
        # Google's ID-token issuer, played locally: the operator function and the invoker fronts verify
        # its tokens; the stand-in (as Cloud Tasks) asks it for the probe tasks' OIDC tokens.
        self.token_issuer = LocalTokenIssuer().start()
        github_env = self._start_github() if self.github_app else {}
        log("starting the Google API stand-in …")
        self._start_standin(config, plan, self.secret_values(config))
        log("starting the functions …")
        functions = apply_plan.deployed_functions(plan)
        # Every URL first: functions link to each other (approval links, dashboard). A private HTTP
        # function's URL is its invoker front's; the function itself listens behind it.
        ports = {fn.name: free_port() for fn in functions}
        fronted = [fn for fn in functions if not fn.public and not fn.trigger_topic and fn.name not in OPEN_LOCALLY]
        front_ports = {fn.name: free_port() for fn in fronted}
        self.urls = {fn.name: f"http://127.0.0.1:{front_ports.get(fn.name, ports[fn.name])}" for fn in functions}
        local = apply_plan.LocalDifferences(
            project=PROJECT, region=REGION, source_dir=source_dir, emulator_env=self._emulator_env(),
            standin_endpoint=self.standin_endpoint,
            function_urls={config.function_url(name): url for name, url in self.urls.items()},
            token_issuer=(self.token_issuer.certs_url, self.token_issuer.issuer), key_dir=self.workdir / "keys",
            extra_env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                       "SAMPLE_STACK_DIR": str(self.workdir), **github_env})
        self.started_env = apply_plan.start_functions(
            plan, local, ports, lambda name, argv, env, cwd: self._spawn(name, argv, env, cwd))
        for fn in functions:
            port = ports[fn.name]
            log_path = self.workdir / "logs" / f"{fn.name}.log"
            try:
                wait_port("127.0.0.1", port, 60, self.processes[fn.name], log_path)
            except ConfigError:
                tail = log_path.read_text()[-600:] if log_path.exists() else ""
                raise ConfigError(f"function {fn.name} (entry point {fn.entry_point}) did not start from "
                                  f"{source_dir}: {tail}") from None
        self.fronts = [InvokerFront(fn.name, front_ports[fn.name], ports[fn.name], apply_plan.invokers(plan, fn.name),
                                    self.token_issuer.certs_url, self.token_issuer.issuer) for fn in fronted]
        apply_plan.create_push_subscriptions(plan, self.urls)
        threading.Thread(target=self._tick, args=(config.tick_topic,), daemon=True, name="ticker").start()

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
        for front in self.fronts:
            front.stop()
        self.fronts.clear()
        for emulator in self.emulators:
            emulator.stop()
        self.emulators.clear()
        if self.token_issuer is not None:
            self.token_issuer.stop()
            self.token_issuer = None
        if self.github is not None:
            self.github.stop()
            self.github = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- configuration ----------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """What this process (demo, tests, relctl) and the stand-in need: emulators, project, a key."""
        return {
            **self._emulator_env(),
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "RELEASE_PROJECT": PROJECT,
            "RELEASE_REGION": REGION,
            # Who calls the stand-in from here: the functions' runtime account (the demo and relctl too).
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.workdir / "keys" / f"{self.deploy_config().runtime_sa}.json"),
        }

    def _emulator_env(self) -> dict[str, str]:
        hosts = dict(self.reuse_emulators or {e.name: e.host for e in self.emulators})
        return {"FIRESTORE_EMULATOR_HOST": hosts.get("firestore", ""), "PUBSUB_EMULATOR_HOST": hosts.get("pubsub", "")}

    def deploy_config(self) -> DeployConfig:
        """The inputs deploy/ reads from an operator's RELEASE_* settings, with this stack's values."""
        settings = Settings(
            project=PROJECT, region=REGION, pipeline_file=str(self.pipeline_file),
            pipeline_files=";".join(str(p) for p in self.pipeline_files),
            # The stand-in's Artifact Registry: builds push the release's image here, and jobs
            # and revisions run the code of the image their template names (local/standin/images.py).
            artifact_registry=f"{REGION}-docker.pkg.dev/{PROJECT}/sample",
            # The "GitHub" of the local stack: builds fetch the pushed commit from this checkout,
            # unless a test names a clone.
            source_url=self.source_url or str(REPO_ROOT), collection_prefix=self.collection_prefix,
            smtp_host="127.0.0.1" if self.smtp_port else "", smtp_port=self.smtp_port or 25,
            notify_emails="release-team@example.com", operators=",".join(LOCAL_OPERATORS))
        pipeline = load_pipeline(self.pipeline_file)
        app = {"github_app_id_secret": "release-github-app-id", "github_app_key_secret": "release-github-app-key"}
        return DeployConfig(settings=settings, pipeline=pipeline, github_repository="example/sample-app",
                            **(app if self.github_app else {}),
                            project_number=PROJECT_NUMBER, pipeline_sa_id=pipeline_account_id(pipeline, PROJECT, {}),
                            app_service_account_list=(APP_SA,), source_dir=str(self.workdir / "function-source"))

    def secret_values(self, config: DeployConfig) -> dict[str, str]:
        """The versions the local operator adds (deploy/README.md, 'Secrets'), by the plan's secret ids."""
        values = {config.webhook_secret: self.webhook_secret, config.approval_keys_secret: self.approval_keys}
        if self.github_app:
            values.update({config.github_app_id_secret: GITHUB_APP_ID, config.github_app_key_secret: self._github_key})
        return values

    def _start_github(self) -> dict[str, str]:
        """GitHub's API on loopback, with the App installed on the sample repository; returns what the
        functions are told locally (where GitHub is)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        from local.github_api.standin import GitHubStandin

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._github_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        repositories = {repo for path in (self.pipeline_file, *self.pipeline_files)
                        for repo in load_pipeline(path).repositories}  # the App is installed on each
        self.github = GitHubStandin(GITHUB_APP_ID, public, dict.fromkeys(sorted(repositories), GITHUB_INSTALLATION))
        return {"RELEASE_GITHUB_API_URL": self.github.start()}

    def function_env(self, name: str = "operator") -> dict[str, str]:
        """The environment function ``name`` was started with (its secrets included)."""
        return dict(self.started_env.get(name, {}))

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

    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.Popen:
        log = (self.workdir / "logs" / f"{name}.log").open("w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        self.processes[name] = proc
        return proc

    def _start_standin(self, config: DeployConfig, plan: Plan, secret_values: dict[str, str]) -> None:
        from local.standin.identity import mint_key

        # This process (demo, tests, relctl) calls as the runtime account, with a key the stand-in (as IAM) knows.
        mint_key(self.workdir / "keys", config.runtime_sa)
        mint_key(self.workdir / "keys", LOCAL_OWNER)
        config = {
            "project": PROJECT, "region": REGION, "workspace": str(REPO_ROOT),
            "local_images": ["local", "local/sample-app"],
            "pubsub_emulator_host": self.base_env()["PUBSUB_EMULATOR_HOST"],
            "builds_topic": config.settings.builds_topic, "log_dir": str(self.workdir / "logs" / "standin"),
            "task_dispatch_delay_s": self.task_dispatch_delay_s,
            "metric_sample_s": self.metric_sample_s, "metric_delay_s": self.metric_delay_s,
            "log_delay_s": self.log_delay_s,
            # The plan's queue, secrets (with the local operator's versions) and IAM policies.
            **apply_plan.standin_seed(plan, secret_values, owner=f"serviceAccount:{LOCAL_OWNER}"),
            "enforce_iam": True, "key_dir": str(self.workdir / "keys"),
            "project_number": PROJECT_NUMBER, "id_token_url": self.token_issuer.token_url,
            "jobs": self._sample_jobs(),
            "services": [
                {"name": name, "image": f"local/sample-app:v{BASE_VERSION}-base",
                 "env": {"VERSION": BASE_VERSION, "WORK_MS": "50"}, "labels": {"version": BASE_VERSION.replace(".", "-"), "commit": "base"},
                 "service_account": APP_SA}  # a dedicated account, as deploy/ --check requires
                for name in ("sample-web-staging", "sample-web")
            ],
        }
        path = self.workdir / "standin.json"
        path.touch(0o600)  # it holds the local secret values
        path.write_text(json.dumps(config, indent=2))
        env = {**os.environ, **self.base_env(), "PYTHONPATH": str(REPO_ROOT), "SAMPLE_STACK_DIR": str(self.workdir),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
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
             "env": {"DATA_DIR": str(data / "staging")}, "service_account": APP_SA},
            {"name": "sample-ingestion-smoke", "image": "local", "command": [sys.executable, "-m", "local.sample_ci", "ingest"],
             "env": {"DATA_DIR": str(data / "staging")}, "service_account": APP_SA},
            {"name": "sample-migrate-prod", "image": "local", "command": [sys.executable, "-m", "sample_app.migrate"],
             "env": {"DATA_DIR": str(data / "prod")}, "service_account": APP_SA},
        ]

    def _tick(self, tick_topic: str) -> None:
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        topic = publisher.topic_path(PROJECT, tick_topic)
        while not self._stop.wait(self.tick_every_s):
            try:
                publisher.publish(topic, b"{}").result(10)
            except Exception as exc:  # the stack may be shutting down
                if not self._stop.is_set():
                    print(f"ticker: {exc}", file=sys.stderr)
