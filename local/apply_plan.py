"""The second applier of deploy/'s plan: the same ``build_plan`` output, applied to this machine.

``deploy/apply.py`` runs the plan's gcloud commands against GCP; this module reads the same
steps (the functions' ``gcloud functions deploy`` flags, the topics, the subscriptions'
policies, the Cloud Tasks queue, the secrets and every IAM binding) and applies them to the
emulators and the stand-in. Nothing here restates a setting the plan holds: what differs on
this machine is named once, in ``LocalDifferences`` (endpoints, function URLs, the source root
in place of Cloud Functions' ``/workspace``, the emulators, the token issuer).

Each function runs with functions-framework from the directory ``deploy/source.py``
assembles (its root ``main.py``, no ``shared/testing``), with exactly the plan's entry point,
environment and secrets, and the key of the plan's ``--service-account`` as the identity of
its Google API calls, so the stand-in's IAM judges it by the plan's grants. Its secret
references are resolved when it starts, through the Secret Manager stand-in and as that
account, the way Cloud Run resolves them when a revision deploys: a secret without an enabled
version, or one the account may not read, stops the stack naming the secret.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deploy.iam_policy import policies
from deploy.model import Plan, Resource
from shared.domain.errors import ConfigError

WORKSPACE = "/workspace"  # Cloud Functions' source root, named in the plan's environment
ENDPOINT_SETTINGS = ("RELEASE_CLOUD_BUILD_ENDPOINT", "RELEASE_CLOUD_RUN_ENDPOINT", "RELEASE_IAM_ENDPOINT",
                     "RELEASE_ARTIFACT_REGISTRY_ENDPOINT", "RELEASE_CLOUD_TASKS_ENDPOINT",
                     "RELEASE_LOGGING_ENDPOINT", "RELEASE_MONITORING_ENDPOINT")


# -- the plan, read ----------------------------------------------------------------------------
def _flags(command: tuple[str, ...]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in command if a.startswith("--"))


@dataclass(frozen=True)
class DeployedFunction:
    """One ``gcloud functions deploy`` of the plan, as data."""

    name: str
    entry_point: str
    service_account: str
    env: dict[str, str]
    secrets: dict[str, tuple[str, str]]  # env var -> (secret id, version)
    trigger_topic: str  # "": HTTP
    retry: bool
    timeout_s: int
    public: bool

    @property
    def signature_type(self) -> str:
        return "cloudevent" if self.trigger_topic else "http"


def deployed_functions(plan: Plan) -> list[DeployedFunction]:
    found = []
    for step in plan.actions:
        if step.kind != "function":
            continue
        flags = _flags(step.command)
        env = dict(item.split("=", 1) for item in flags["set-env-vars"].split(",")) if flags.get("set-env-vars") else {}
        secrets = {}
        for item in filter(None, flags.get("set-secrets", "").split(",")):
            var, reference = item.split("=", 1)
            secret, _, version = reference.partition(":")
            secrets[var] = (secret, version or "latest")
        found.append(DeployedFunction(
            name=step.name, entry_point=flags["entry-point"], service_account=flags["service-account"], env=env,
            secrets=secrets, trigger_topic=flags.get("trigger-topic", ""), retry="retry" in flags,
            timeout_s=int(flags["timeout"].rstrip("s")), public="allow-unauthenticated" in flags))
    return found


@dataclass(frozen=True)
class PushSubscription:
    """The subscription Eventarc makes for a function's trigger, with the plan's policy on it."""

    function: str
    topic: str
    ack_deadline_s: int
    dead_letter_topic: str = ""
    max_delivery_attempts: int = 0
    min_retry_delay_s: int = 0
    max_retry_delay_s: int = 0

    @property
    def name(self) -> str:  # Eventarc's name differs per project; locally the function names it
        return f"eventarc-{self.function}"


def push_subscriptions(plan: Plan) -> list[PushSubscription]:
    triggers = {fn.name: fn.trigger_topic for fn in deployed_functions(plan) if fn.trigger_topic}
    found = []
    for step in plan.actions:
        if step.kind != "subscription-policy":
            continue
        function = step.name.removeprefix("${SUBSCRIPTION:").removesuffix("}")
        flags = _flags(step.command)
        found.append(PushSubscription(
            function, triggers.pop(function), int(flags["ack-deadline"]), flags.get("dead-letter-topic", ""),
            int(flags.get("max-delivery-attempts", 0)), int(flags.get("min-retry-delay", "0s").rstrip("s")),
            int(flags.get("max-retry-delay", "0s").rstrip("s"))))
    if triggers:  # a trigger without a policy step: Eventarc's defaults would apply, the plan forgot it
        raise ConfigError(f"the plan sets no subscription policy for {', '.join(sorted(triggers))}")
    return found


def resources(plan: Plan, kind: str) -> list[Resource]:
    return [r for r in plan.resources if r.kind == kind]


def queue_settings(resource: Resource) -> dict:
    flags = _flags(resource.create)
    return {"name": resource.name, "max_attempts": int(flags["max-attempts"]),
            "min_backoff_s": float(flags["min-backoff"].rstrip("s")),
            "max_backoff_s": float(flags["max-backoff"].rstrip("s")),
            "max_concurrent_dispatches": int(flags["max-concurrent-dispatches"])}


def secret_bindings(plan: Plan) -> dict[str, dict[str, list[str]]]:
    """secret id -> role -> members, from the plan's bindings on secrets."""
    found: dict[str, dict[str, list[str]]] = {}
    for binding in plan.bindings:
        if binding.scope == "secret":
            found.setdefault(binding.target, {}).setdefault(binding.role, []).append(binding.member)
    return found


# -- what differs on this machine, in one place ------------------------------------------------
@dataclass
class LocalDifferences:
    project: str
    region: str
    source_dir: Path  # the assembled source: the functions' /workspace
    emulator_env: dict[str, str]  # FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST
    standin_endpoint: str = ""  # every Google API but Firestore and Pub/Sub
    function_urls: dict[str, str] = field(default_factory=dict)  # plan URL -> loopback URL
    token_issuer: tuple[str, str] = ("", "")  # (certs URL, issuer): Google's ID tokens, played locally
    key_dir: Path = Path()
    extra_env: dict[str, str] = field(default_factory=dict)  # PATH, the sample app's work folder

    def env_for(self, fn: DeployedFunction) -> dict[str, str]:
        env = {k: self._local_value(v) for k, v in fn.env.items()}
        env.update(self.emulator_env)
        env.update({key: self.standin_endpoint for key in ENDPOINT_SETTINGS})
        env.update({"GOOGLE_CLOUD_PROJECT": self.project, "RELEASE_OPERATOR_CERTS_URL": self.token_issuer[0],
                    "RELEASE_OPERATOR_ISSUERS": self.token_issuer[1],
                    "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_dir / f"{fn.service_account}.json"),
                    "PYTHONPATH": str(self.source_dir)})
        env.update(self.extra_env)
        return env

    def _local_value(self, value: str) -> str:
        for remote, local in self.function_urls.items():
            value = value.replace(remote, local)
        if value.startswith(WORKSPACE + "/") or f";{WORKSPACE}/" in value:
            value = value.replace(WORKSPACE, str(self.source_dir))
        return value


# -- applying ------------------------------------------------------------------------------------
def standin_seed(plan: Plan, secret_values: dict[str, str], owner: str = "") -> dict:
    """What the stand-in creates before it enforces IAM: the plan's queue, secrets (with the
    versions the local operator adds) and every IAM policy, as stand-in config entries;
    ``owner`` (the one local grant the plan does not make) holds roles/owner on the project."""
    found = policies(plan)
    if owner:
        found.project.setdefault("roles/owner", []).append(owner)
    secrets = {r.name: ([secret_values[r.name]] if r.name in secret_values else []) for r in resources(plan, "secret")}
    return {
        "iam_bindings": found.project, "iam_account_bindings": found.accounts, "custom_roles": found.custom_roles,
        "iam_queue_bindings": found.queues, "iam_secret_bindings": secret_bindings(plan),
        "iam_repository_bindings": found.repositories,
        "queues": [dict(queue_settings(r), name=f"projects/{plan.project}/locations/{_location(r)}/queues/{r.name}")
                   for r in resources(plan, "tasks-queue")],
        "secrets": secrets,
    }


def _location(resource: Resource) -> str:
    return _flags(resource.create)["location"]


def create_topics(plan: Plan) -> None:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    for resource in resources(plan, "topic"):
        try:
            publisher.create_topic(name=publisher.topic_path(plan.project, resource.name))
        except AlreadyExists:
            pass  # a reused emulator: the topic stays
    for resource in resources(plan, "subscription"):  # pull subscriptions (the dead letters' hold)
        flags = _flags(resource.create)
        path = subscriber.subscription_path(plan.project, resource.name)
        _delete_subscription(subscriber, path)
        subscriber.create_subscription(request={
            "name": path, "topic": publisher.topic_path(plan.project, flags["topic"]),
            "message_retention_duration": {"seconds": _duration_s(flags["message-retention-duration"])},
            # --expiration-period=never: an expiration policy without a ttl never expires
            **({"expiration_policy": {}} if flags.get("expiration-period") == "never" else {})})


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(text[:-1]) * units[text[-1]]


def _delete_subscription(subscriber, path: str) -> None:
    from google.api_core.exceptions import NotFound

    try:
        subscriber.delete_subscription(subscription=path)
    except NotFound:
        pass


def create_push_subscriptions(plan: Plan, urls: dict[str, str]) -> None:
    """Eventarc's push subscription per trigger, with the plan's ack deadline, dead-letter policy and backoff."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    for sub in push_subscriptions(plan):
        path = subscriber.subscription_path(plan.project, sub.name)
        _delete_subscription(subscriber, path)
        request = {"name": path, "topic": subscriber.topic_path(plan.project, sub.topic),
                   "push_config": {"push_endpoint": urls[sub.function] + "/"},
                   "ack_deadline_seconds": sub.ack_deadline_s}
        if sub.dead_letter_topic:
            request["dead_letter_policy"] = {"dead_letter_topic": subscriber.topic_path(plan.project, sub.dead_letter_topic),
                                             "max_delivery_attempts": sub.max_delivery_attempts}
            request["retry_policy"] = {"minimum_backoff": {"seconds": sub.min_retry_delay_s},
                                       "maximum_backoff": {"seconds": sub.max_retry_delay_s}}
        subscriber.create_subscription(request=request)


def resolve_secrets(fn: DeployedFunction, project: str, endpoint: str, key_file: Path) -> dict[str, str]:
    """The function's secret references, read as its own account (Cloud Run does so at deploy);
    ConfigError naming the function and the secret when one cannot be read."""
    from google.api_core import exceptions as gexc

    client = secret_client(endpoint, key_file)
    values = {}
    for var, (secret, version) in fn.secrets.items():
        try:
            answer = client.access_secret_version(name=f"projects/{project}/secrets/{secret}/versions/{version}",
                                                  retry=None, timeout=10)
        except gexc.GoogleAPICallError as exc:
            raise ConfigError(f"function {fn.name} does not start: secret {secret} ({var}, version {version}): "
                              f"{exc.message}") from None
        values[var] = answer.payload.data.decode()
    return values


def secret_client(endpoint: str, key_file: Path):
    """The real Secret Manager client on the stand-in, calling as the account of ``key_file``."""
    import grpc
    from google.auth.transport.grpc import AuthMetadataPlugin
    from google.auth.transport.requests import Request
    from google.cloud import secretmanager_v1
    from google.oauth2 import service_account

    transport_cls = secretmanager_v1.services.secret_manager_service.transports.SecretManagerServiceGrpcTransport
    # No scopes: a self-signed JWT for the API's host (https://google.aip.dev/auth/4111), no token endpoint.
    credentials = service_account.Credentials.from_service_account_file(str(key_file))
    plugin = AuthMetadataPlugin(credentials, Request(), default_host=transport_cls.DEFAULT_HOST)
    channel = grpc.secure_channel(endpoint, grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP), grpc.metadata_call_credentials(plugin)))
    return secretmanager_v1.SecretManagerServiceClient(transport=transport_cls(channel=channel))


def function_argv(fn: DeployedFunction, source_dir: Path, port: str) -> list[str]:
    return [str(Path(sys.executable).parent / "functions-framework"), "--target", fn.entry_point,
            "--source", str(source_dir / "main.py"), "--signature-type", fn.signature_type,
            "--host", "127.0.0.1", "--port", port]


def invokers(plan: Plan, function: str) -> set[str]:
    """Who the plan lets call ``function`` (its roles/run.invoker bindings)."""
    return {b.member for b in plan.bindings
            if b.scope == "function" and b.target == function and b.role == "roles/run.invoker"}


def start_functions(plan: Plan, local: LocalDifferences, ports: dict[str, int],
                    spawn: Callable[[str, list[str], dict[str, str], Path], object]) -> dict[str, dict[str, str]]:
    """Resolve each function's secrets, then start it on its port; returns the environment each got."""
    from local.standin.identity import mint_key

    started = {}
    for fn in deployed_functions(plan):
        key = mint_key(local.key_dir, fn.service_account)
        env = {**os.environ, **local.env_for(fn)}
        env.update(resolve_secrets(fn, plan.project, local.standin_endpoint, key))
        spawn(fn.name, function_argv(fn, local.source_dir, str(ports[fn.name])), env, local.source_dir)
        started[fn.name] = env
    return started
