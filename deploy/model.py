"""The deploy as data: every resource and IAM binding, in the order they must exist.

``build_plan(config)`` is pure: no gcloud, no credentials, no network. The same config
always yields the same steps (tests assert it), and ``deploy/apply.py`` carries them out
describe-before-create. Values only known in the project (its number, the Pub/Sub
subscription Eventarc made for a function) appear as ``${...}`` placeholders that the
apply step resolves; the dry-run prints them as they are.

Role choices, and why each principal needs each role, are in the ``why`` of every binding
(printed by the dry-run) and summarised in deploy/README.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

from deploy.config import DeployConfig
from deploy.firestore import COMPOSITE_INDEXES, TTL_POLICIES
from deploy.wif import GITHUB_ISSUER
from shared.domain.build_params import connected_repositories, private_checked_services
from shared.domain.preflight import (
    BASE_ROLES, BUILD_LOG_ROLE, SECRET_ACCESSOR_ROLE, build_secret_names, prod_secret_names,
)

APIS = (
    "artifactregistry.googleapis.com", "cloudbuild.googleapis.com", "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com", "cloudscheduler.googleapis.com", "cloudtasks.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com", "iam.googleapis.com", "iamcredentials.googleapis.com",
    "pubsub.googleapis.com", "run.googleapis.com", "secretmanager.googleapis.com", "sts.googleapis.com",
)
PREFLIGHT_READER_ROLE_ID = "releasePreflightReader"
PREFLIGHT_READER_PERMISSIONS = ("resourcemanager.projects.getIamPolicy", "secretmanager.secrets.getIamPolicy")
# The canary analysis reads log entries and time series, nothing else: instead of roles/logging.viewer
# and roles/monitoring.viewer (which also read sinks, metrics, dashboards, alert policies, uptime checks
# ...), a custom role with exactly the two permissions its calls need (shared/domain/iam_roles.py,
# local/standin/iam_guard.py: ListLogEntries, ListTimeSeries). Both may be used in custom roles
# (https://cloud.google.com/iam/docs/custom-roles-permissions-support).
CANARY_READER_ROLE_ID = "releaseCanaryReader"
CANARY_READER_PERMISSIONS = ("logging.logEntries.list", "monitoring.timeSeries.list")
# A rollback from the registry (relctl rollback --from-registry, --to-tag when no revision of the tag is
# left) lists a package's tags and reads one (shared/adapters/executors/registry.py: ListTags, GetTag),
# nothing else: roles/artifactregistry.reader would also read and download every image. Granted on the
# release repository only. Both permissions may be used in custom roles.
REGISTRY_TAG_READER_ROLE_ID = "releaseRegistryTagReader"
REGISTRY_TAG_READER_PERMISSIONS = ("artifactregistry.tags.get", "artifactregistry.tags.list")
# Custom role id -> its permissions: created by the plan, enforced by the local stand-in.
CUSTOM_ROLES = {PREFLIGHT_READER_ROLE_ID: PREFLIGHT_READER_PERMISSIONS, CANARY_READER_ROLE_ID: CANARY_READER_PERMISSIONS,
                REGISTRY_TAG_READER_ROLE_ID: REGISTRY_TAG_READER_PERMISSIONS}
# Pub/Sub redelivers a failing push with backoff; after this many attempts the message goes to
# the dead-letter topic instead of being retried for the 24 h an event function retries.
MAX_DELIVERY_ATTEMPTS = 10
MIN_RETRY_DELAY = "10s"
MAX_RETRY_DELAY = "600s"
PYTHON_RUNTIME = "python311"
# A push request must finish within the subscription's ack deadline, else Pub/Sub redelivers it
# while it runs (Subscription.ack_deadline_seconds: "the maximum ... is 600 seconds"); dispatch
# may run 120 s (checks run as probes now), and the longest deadline costs nothing.
PUSH_ACK_DEADLINE_S = 600
# The build account of `gcloud functions deploy --build-service-account` and of the release-tools build:
# instead of roles/cloudbuild.builds.builder on the project (storage admin on every bucket, writer on
# every repository, Pub/Sub publish ...), the grants Google lists for a custom build service account
# (https://cloud.google.com/functions/docs/securing/build-custom-sa, "Grant permissions"):
# roles/logging.logWriter "for storing build logs in Cloud Logging"; roles/artifactregistry.writer
# "for storing build images in Artifact Registry", which "you can set ... on the repository's IAM policy"
# (so: on our two repositories only, the functions' one passed as --docker-repository);
# roles/storage.objectViewer to read the uploaded source (the staging buckets are made by the upload
# itself, so no bucket-level grant can exist before it: project, read-only).
BUILDER_PROJECT_ROLES = ("roles/logging.logWriter", "roles/storage.objectViewer")
BUILDER_REPOSITORY_ROLE = "roles/artifactregistry.writer"
READ_TOKEN_ROLE = "roles/cloudbuild.readTokenAccessor"  # builds from a connected (private) repository
FUNCTIONS_REPOSITORY = "release-functions"  # the functions' images (gcloud functions deploy --docker-repository)


@dataclass(frozen=True)
class Resource:
    """Created only when ``describe`` fails (exit status != 0)."""

    phase: str
    kind: str
    name: str
    describe: tuple[str, ...]
    create: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Binding:
    """One role for one member on one resource; add-iam-policy-binding is idempotent."""

    phase: str
    scope: str  # project | secret | service-account | topic | subscription | function
    target: str
    role: str
    member: str
    command: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Action:
    """A command that converges by itself (enable an API, deploy or update) and runs every time."""

    phase: str
    kind: str
    name: str
    command: tuple[str, ...]
    why: str


Step = Union[Resource, Binding, Action]


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    entry_point: str
    trigger_topic: str = ""  # empty: HTTP
    public: bool = False  # allow unauthenticated callers (they prove themselves by signature)
    retry: bool = False
    secrets: tuple[tuple[str, str], ...] = ()  # (env var, secret id)
    why: str = ""
    timeout_s: int = 60


@dataclass(frozen=True)
class Plan:
    project: str
    steps: tuple[Step, ...]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    @property
    def resources(self) -> tuple[Resource, ...]:
        return tuple(s for s in self.steps if isinstance(s, Resource))

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return tuple(s for s in self.steps if isinstance(s, Binding))

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(s for s in self.steps if isinstance(s, Action))

    def roles_of(self, member: str, scope: str | None = None) -> set[str]:
        return {b.role for b in self.bindings if b.member == member and (scope is None or b.scope == scope)}

    def commands(self) -> list[tuple[str, ...]]:
        """Every gcloud command the apply may run, in order (describe, then create)."""
        out: list[tuple[str, ...]] = []
        for step in self.steps:
            if isinstance(step, Resource):
                out += [step.describe, step.create]
            else:
                out.append(step.command)
        return out


def sa_member(email: str) -> str:
    return f"serviceAccount:{email}"


def functions(config: DeployConfig) -> tuple[FunctionSpec, ...]:
    s = config.settings
    webhook = ("RELEASE_WEBHOOK_SECRET", config.webhook_secret)
    keys = ("RELEASE_APPROVAL_KEYS", config.approval_keys_secret)
    # The functions that send mail log in to the relay with it; a relay without a login needs no secret
    # (Cloud Run refuses to deploy a revision whose secret has no enabled version).
    mail = (("RELEASE_SMTP_PASSWORD", config.smtp_password_secret),) if s.smtp_user else ()
    # The functions that carry out approval requests ask GitHub's compare with it (when one is named).
    compare = (("RELEASE_GITHUB_TOKEN", config.github_token_secret),) if config.github_token_secret else ()
    # The functions that report to GitHub as the App (dispatch after each transition, sweep its retries).
    compare += github_app_secrets(config)
    return (
        FunctionSpec("on-push", "on_push", public=True, secrets=(webhook,),
                     why="GitHub webhook; public, every request must carry a valid X-Hub-Signature-256"),
        # Every call of dispatch is short now (checks run as probes); 120 s leaves room for retries of API calls.
        FunctionSpec("dispatch", "dispatch", trigger_topic=s.events_topic, retry=True, secrets=(keys, *mail, *compare),
                     why="pipeline events; retry on (transient errors redeliver), malformed events are acked",
                     timeout_s=120),
        FunctionSpec("dispatch-builds", "dispatch", trigger_topic=s.builds_topic, retry=True, secrets=(keys, *mail, *compare),
                     why="Cloud Build status messages; same entry point, a gen2 function has one trigger",
                     timeout_s=120),
        FunctionSpec("probe", "probe", public=False, secrets=(keys,),
                     why="Cloud Tasks calls it for each probe of a running stage; private, the invoker account's "
                         "OIDC token and the body's signature are checked",
                     timeout_s=60),
        FunctionSpec("on-approval", "on_approval", public=True, secrets=(keys,),
                     why="signed approval links; public, the link's signature and nonce are the credential"),
        FunctionSpec("drain-dead-letters", "drain_dead_letters", trigger_topic=config.dead_letter_topic, retry=True,
                     why="what Pub/Sub gave up on joins the one dead-letter store (dead_letters/), where "
                         "relctl lists and re-drives it; retry on, and no dead-letter policy of its own"),
        FunctionSpec("sweep", "sweep", trigger_topic=config.tick_topic, retry=False, secrets=(keys, *mail, *compare),
                     why="every minute; no retry, the next tick comes in a minute anyway"),
        FunctionSpec("dashboard", "dashboard", public=False,
                     why="read-only status page; IAM-protected, grant roles/run.invoker to the team"),
        # Publishes operator events, so it needs no secret; the caller's ID token is its credential.
        FunctionSpec("operator", "operator", public=False,
                     why="operator actions (replay, chaos, …); IAM lets only the listed operators call it, "
                         "and the code verifies their Google ID token against RELEASE_OPERATORS again"),
    )


def github_app_secrets(config: DeployConfig) -> tuple[tuple[str, str], ...]:
    """(env var, secret id) of the GitHub App that reports deployments and statuses; () when none."""
    if not (config.github_app_id_secret and config.github_app_key_secret):
        return ()
    return (("RELEASE_GITHUB_APP_ID", config.github_app_id_secret),
            ("RELEASE_GITHUB_APP_KEY", config.github_app_key_secret))


def entry_points(config: DeployConfig) -> tuple[str, ...]:
    """Every entry point the plan deploys: the assembled main.py must export each one."""
    return tuple(dict.fromkeys(fn.entry_point for fn in functions(config)))


def function_secrets(config: DeployConfig) -> tuple[str, ...]:
    """The secrets the functions mount: each must hold an enabled version before they deploy."""
    return tuple(dict.fromkeys(secret for fn in functions(config) for _, secret in fn.secrets))


def operator_emails(settings) -> list[str]:
    from shared.domain.identity import normalise

    return [normalise(e) for e in settings.operators.replace(";", ",").split(",") if normalise(e)]


def function_env(config: DeployConfig) -> dict[str, str]:
    """Plain settings for the functions: never the secret ones, never the local endpoints."""
    s = config.settings
    env = {
        "RELEASE_PROJECT": s.project,
        "RELEASE_REGION": s.region,
        "RELEASE_RELEASE_BRANCH": s.release_branch,
        "RELEASE_EVENTS_TOPIC": s.events_topic,
        "RELEASE_UPDATES_TOPIC": s.updates_topic,
        "RELEASE_BUILDS_TOPIC": s.builds_topic,
        "RELEASE_ARTIFACT_REGISTRY": s.artifact_registry,
        "RELEASE_APPROVAL_BASE_URL": config.function_url("on-approval"),
        "RELEASE_PUBLIC_BASE_URL": config.function_url("dashboard"),
        "RELEASE_OPERATOR_AUDIENCE": config.function_url("operator"),
        "RELEASE_MAIL_FROM": s.mail_from,
        # Builds and jobs run as this account (the runtime SA may act as it).
        "RELEASE_PIPELINE_SERVICE_ACCOUNT": config.pipeline_sa,
        # Probes of running stages: Cloud Tasks queue, the probe function, the identity of its calls.
        "RELEASE_PROBE_QUEUE": s.probe_queue,
        "RELEASE_PROBE_URL": config.function_url("probe"),
        "RELEASE_PROBE_SERVICE_ACCOUNT": config.invoker_sa,
        # The function source root is /workspace; the file is copied to pipelines/.
        "RELEASE_PIPELINE_FILE": f"/workspace/pipelines/{_basename(s.pipeline_file)}",
    }
    if s.operators:
        # gcloud's --set-env-vars splits on ','; the functions also accept ';' between addresses.
        env["RELEASE_OPERATORS"] = ";".join(operator_emails(s))
    if s.collection_prefix:
        env["RELEASE_COLLECTION_PREFIX"] = s.collection_prefix
    if s.smtp_host:
        env["RELEASE_SMTP_HOST"] = s.smtp_host
        env["RELEASE_SMTP_PORT"] = str(s.smtp_port)
    if s.smtp_user:
        env["RELEASE_SMTP_USER"] = s.smtp_user
    if s.notify_emails:  # ';' between addresses: gcloud's --set-env-vars splits on ','
        env["RELEASE_NOTIFY_EMAILS"] = ";".join(a.strip() for a in s.notify_emails.replace(";", ",").split(",")
                                                if a.strip())
    if s.build_region:
        env["RELEASE_BUILD_REGION"] = s.build_region
    if s.github_report_repositories:  # ';' between names: gcloud's --set-env-vars splits on ','
        env["RELEASE_GITHUB_REPORT_REPOSITORIES"] = s.github_report_repositories.replace(",", ";")
    if s.source_url:
        env["RELEASE_SOURCE_URL"] = s.source_url
    extra = s.pipeline_paths()[1:]
    if extra:  # more applications: on_push maps each repository to its file (copied like the first)
        env["RELEASE_PIPELINE_FILES"] = ";".join(f"/workspace/pipelines/{_basename(f)}" for f in extra)
    return env


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def build_plan(config: DeployConfig) -> Plan:
    p, r = config.project, config.region
    proj = f"--project={p}"
    steps: list[Step] = []
    pipeline_member = sa_member(config.pipeline_sa)
    runtime_member = sa_member(config.runtime_sa)
    invoker_member = sa_member(config.invoker_sa)
    pubsub_agent = f"serviceAccount:service-{config.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

    # -- apis: enabling is idempotent
    steps.append(Action("apis", "services", "apis", ("services", "enable", *APIS, proj),
                        "every API the functions, the builds and WIF use"))

    # -- identity: three accounts, one custom role, WIF
    for account_id, why in (
        (config.pipeline_sa_id, "the pipeline: builds and jobs run as it; GitHub acts as it through WIF"),
        (config.runtime_sa_id, "the functions' runtime identity"),
        (config.invoker_sa_id, "Eventarc's identity when it pushes events into the functions"),
        (config.builder_sa_id, "builds the functions' and the release-tools images (a new project has no default "
                               "build account the deployer may use)"),
    ):
        email = config.sa_email(account_id)
        steps.append(Resource("identity", "service-account", email,
                              ("iam", "service-accounts", "describe", email, proj),
                              ("iam", "service-accounts", "create", account_id, f"--display-name={account_id}", proj),
                              why))
    for role_id, title, why in (
        (PREFLIGHT_READER_ROLE_ID, "Release preflight reader",
         "read (only) the IAM policies the preflight stage checks; roles/iam.securityReviewer would read every policy"),
        (CANARY_READER_ROLE_ID, "Release canary reader",
         "list (only) log entries and time series for the canary analysis; the viewer roles read far more"),
        (REGISTRY_TAG_READER_ROLE_ID, "Release registry tag reader",
         "list and read (only) the release images' tags for a rollback from the registry; "
         "roles/artifactregistry.reader would also download every image"),
    ):
        steps.append(Resource(
            "identity", "custom-role", f"projects/{p}/roles/{role_id}",
            ("iam", "roles", "describe", role_id, proj),
            ("iam", "roles", "create", role_id, proj, f"--title={title}",
             f"--permissions={','.join(CUSTOM_ROLES[role_id])}", "--stage=GA"),
            why))
    repo = config.github_repository
    wif = config.wif_policy
    steps.append(Resource(
        "identity", "wif-pool", config.wif_pool,
        ("iam", "workload-identity-pools", "describe", config.wif_pool, "--location=global", proj),
        ("iam", "workload-identity-pools", "create", config.wif_pool, "--location=global",
         "--display-name=GitHub Actions", proj),
        "federates GitHub's OIDC tokens; no service account key exists anywhere"))
    steps.append(Resource(
        "identity", "wif-provider", config.wif_provider,
        ("iam", "workload-identity-pools", "providers", "describe", config.wif_provider,
         f"--workload-identity-pool={config.wif_pool}", "--location=global", proj),
        ("iam", "workload-identity-pools", "providers", "create-oidc", config.wif_provider,
         f"--workload-identity-pool={config.wif_pool}", "--location=global",
         f"--issuer-uri={GITHUB_ISSUER}",
         f"--attribute-mapping={wif.mapping_flag()}",
         f"--attribute-condition={config.wif_attribute_condition}", proj),
        f"only tokens of {repo} (repository id {config.github_repository_id}, which survives a rename or a "
        f"re-created repository of the same name) for a push or dispatch of {wif.branch_ref}"
        + (f" or a tag {wif.tag_prefix}*" if wif.tag_prefix else "")
        + f" running {', '.join(wif.workflows)} are exchanged; other branches, workflows and pull requests are not"))
    for value in wif.principal_values():
        principal_set = (f"principalSet://iam.googleapis.com/projects/{config.number}/locations/global/"
                         f"workloadIdentityPools/{config.wif_pool}/attribute.release_workflow/{value}")
        steps.append(Binding(
            "identity", "service-account", config.pipeline_sa, "roles/iam.workloadIdentityUser", principal_set,
            ("iam", "service-accounts", "add-iam-policy-binding", config.pipeline_sa,
             "--role=roles/iam.workloadIdentityUser", f"--member={principal_set}", "--condition=None", proj),
            f"runs of {value.split(':', 2)[2]} on the release {value.split(':', 2)[1]} of {repo} (and nothing else) "
            "may act as the pipeline account"))

    # -- secrets: created empty; the operator adds the values (never in the repo, never here)
    s = config.settings
    prod_secrets = prod_secret_names(config.pipeline)
    for secret, why in ((config.webhook_secret, "GitHub webhook secret (on_push)"),
                        (config.approval_keys_secret, "link keys: approval links, probe tasks and completions (dispatch, probe, sweep, on_approval)"),
                        *(((config.smtp_password_secret, "the mail relay's login password (approval links, notices)"),)
                          if s.smtp_user else ()),
                        *(((config.github_token_secret, "GitHub token: the approval page's compare (dispatch, sweep)"),)
                          if config.github_token_secret else ()),
                        *((secret, f"GitHub App {what}: deployments and commit statuses (dispatch, sweep)")
                          for (_, secret), what in zip(github_app_secrets(config), ("id", "private key (PEM)"))),
                        *((name, "read by a prod stage of the pipeline") for name in prod_secrets),
                        *((name, "fetched by a build stage (params.available_secrets)")
                          for name in build_secret_names(config.pipeline) if name not in prod_secrets)):
        steps.append(Resource("secrets", "secret", secret, ("secrets", "describe", secret, proj),
                              ("secrets", "create", secret, "--replication-policy=automatic", proj), why))

    # -- messaging
    for topic, why in ((s.events_topic, "stage events into dispatch"), (s.updates_topic, "release updates out"),
                       (s.builds_topic, "Cloud Build publishes build status here by itself"),
                       (config.tick_topic, "the scheduler's tick for sweep"),
                       (config.dead_letter_topic, "messages that failed every delivery attempt")):
        steps.append(Resource("messaging", "topic", topic, ("pubsub", "topics", "describe", topic, proj),
                              ("pubsub", "topics", "create", topic, proj), why))
    hold = f"{config.dead_letter_topic}-hold"
    steps.append(Resource("messaging", "subscription", hold, ("pubsub", "subscriptions", "describe", hold, proj),
                          ("pubsub", "subscriptions", "create", hold, f"--topic={config.dead_letter_topic}",
                           "--message-retention-duration=7d", "--expiration-period=never", proj),
                          "a second copy of dead letters for 7 days, should drain-dead-letters be down"))

    steps.append(Resource("messaging", "tasks-queue", s.probe_queue,
                          ("tasks", "queues", "describe", s.probe_queue, f"--location={r}", proj),
                          ("tasks", "queues", "create", s.probe_queue, f"--location={r}", "--max-attempts=20",
                           "--min-backoff=1s", "--max-backoff=10s", "--max-concurrent-dispatches=100", proj),
                          "one task per probe of a running stage, delivered at its time to the probe function; "
                          "a failed probe is retried within seconds"))

    # -- data
    steps.append(Resource("data", "firestore", "(default)",
                          ("firestore", "databases", "describe", "--database=(default)", proj),
                          ("firestore", "databases", "create", "--database=(default)", f"--location={r}",
                           "--type=firestore-native", proj),
                          "release state, dedup records, approvals (native mode)"))
    for collection, field in TTL_POLICIES:
        group = s.collection(collection)
        steps.append(Action("data", "firestore-ttl", f"{group}.{field}",
                            ("firestore", "fields", "ttls", "update", field, f"--collection-group={group}",
                             "--enable-ttl", "--database=(default)", proj),
                            f"old {collection} are deleted once their {field} passed (deploy/firestore.py)"))
    for index in COMPOSITE_INDEXES:
        group = s.collection(index.collection)
        steps.append(Action("data", "firestore-index", f"{group}({','.join(f for f, _ in index.fields)})",
                            ("firestore", "indexes", "composite", "create", f"--collection-group={group}",
                             *(f"--field-config=field-path={f},order={o}" for f, o in index.fields),
                             "--database=(default)", proj),
                            "a query of the code needs it (deploy/firestore.py)"))
    builder_member = sa_member(config.builder_sa)  # granted before the first build that runs as it
    steps.append(_project_binding(p, "roles/logging.logWriter", builder_member,
                                  "the functions' and release-tools builds write their logs to Cloud Logging"))
    steps.append(_project_binding(p, "roles/storage.objectViewer", builder_member,
                                  "the builds read the uploaded source (read-only; the staging buckets are created "
                                  "by the upload, so no bucket-level grant can precede them)"))
    steps.append(Resource("data", "artifact-repository", f"projects/{p}/locations/{r}/repositories/{FUNCTIONS_REPOSITORY}",
                          ("artifacts", "repositories", "describe", FUNCTIONS_REPOSITORY, f"--location={r}", proj),
                          ("artifacts", "repositories", "create", FUNCTIONS_REPOSITORY, "--repository-format=docker",
                           f"--location={r}", proj),
                          "the functions' images (--docker-repository: the build account writes here, not to every "
                          "repository of the project)"))
    steps.append(_repository_binding(p, FUNCTIONS_REPOSITORY, r, BUILDER_REPOSITORY_ROLE, builder_member,
                                     "the functions' builds push their images here, and only here"))
    registry = s.artifact_registry
    if registry:
        repo_host, _, repo_name = registry.partition(f"/{p}/")
        location = repo_host.removesuffix("-docker.pkg.dev")
        steps.append(Resource("data", "artifact-repository", registry,
                              ("artifacts", "repositories", "describe", repo_name, f"--location={location}", proj),
                              ("artifacts", "repositories", "create", repo_name, "--repository-format=docker",
                               f"--location={location}", proj),
                              "images of the released app, tagged vX.Y.Z-<sha>"))
        steps.append(_repository_binding(p, repo_name, location, BUILDER_REPOSITORY_ROLE, builder_member,
                                         "the release-tools build pushes its image to this repository"))
        steps.append(_repository_binding(p, repo_name, location, f"projects/{p}/roles/{REGISTRY_TAG_READER_ROLE_ID}",
                                         sa_member(config.runtime_sa),
                                         "a rollback from the registry (operator function) lists and reads the "
                                         "release images' tags; on this repository only"))
        steps.append(Action("data", "image", f"{registry}/release-tools",
                            ("builds", "submit", ".", "--config=deploy/release-tools/cloudbuild.yaml",
                             f"--substitutions=_IMAGE={registry}/release-tools", f"--region={config.build_region}",
                             f"--service-account=projects/{p}/serviceAccounts/{config.builder_sa}",
                             "--default-buckets-behavior=regional-user-owned-bucket", proj),
                            "the chaos stage's verdict step runs shared/domain/chaos.py from this image (source: the repo root)"))

    # -- the pipeline account: exactly the seed's roles
    for role in sorted(BASE_ROLES):
        steps.append(_project_binding(p, role, pipeline_member, "seed: " + _SEED_WHY.get(role, "seed role")))
    steps.append(_project_binding(p, BUILD_LOG_ROLE, pipeline_member,
                                  "builds run as this account with CLOUD_LOGGING_ONLY: it writes their logs"))
    for secret in prod_secrets:
        steps.append(_secret_binding(p, secret, SECRET_ACCESSOR_ROLE, pipeline_member,
                                     "seed: secret accessor only in prod stages, and only on their secrets"))
    for secret in build_secret_names(config.pipeline):
        if secret not in prod_secrets:
            steps.append(_secret_binding(p, secret, SECRET_ACCESSOR_ROLE, pipeline_member,
                                         "builds run as this account and fetch their availableSecrets"))

    for repository in sorted(connected_repositories(config.pipeline)):
        # repositories.accessReadToken needs cloudbuild.repositories.accessReadToken on the repository;
        # roles/cloudbuild.readTokenAccessor holds it (with connections.get, repositories.get), on this
        # connection only. The connection itself is made once by hand (deploy/README.md, "Private source").
        name = repository.replace("${project}", p)
        location, connection = name.split("/")[3], name.split("/")[5]
        steps.append(Binding("bindings", "build-connection", name.rsplit("/repositories/", 1)[0], READ_TOKEN_ROLE,
                             pipeline_member,
                             ("builds", "connections", "add-iam-policy-binding", connection, f"--region={location}",
                              f"--member={pipeline_member}", f"--role={READ_TOKEN_ROLE}", proj),
                             f"builds run as this account and fetch {name} through the connection's read token"))

    # -- the runtime account: only what the functions call
    for role, why in (
        ("roles/datastore.user", "Firestore reads and conditional writes of release state"),
        ("roles/cloudbuild.builds.editor", "create and read the stage builds"),
        ("roles/run.developer", "run the stage jobs and update the services and traffic the stages drive"),
        (f"projects/{p}/roles/{PREFLIGHT_READER_ROLE_ID}", "the preflight stage reads the pipeline account's roles"),
        (f"projects/{p}/roles/{CANARY_READER_ROLE_ID}", "the canary analysis lists the checked revision's log "
         "entries and reads Cloud Run's request count and latency series (logEntries.list, timeSeries.list only)"),
    ):
        steps.append(_project_binding(p, role, runtime_member, why))
    for service in sorted(private_checked_services(config.pipeline)):
        # the probe function runs as the runtime account; its ID token is admitted only with run.invoker
        # (https://cloud.google.com/run/docs/securing/managing-access), on the checked service only
        steps.append(Binding("bindings", "run-service", service, "roles/run.invoker", runtime_member,
                             ("run", "services", "add-iam-policy-binding", service, f"--region={r}",
                              f"--member={runtime_member}", "--role=roles/run.invoker", proj),
                             "checks of this private service send the runtime account's ID token (auth: id_token)"))
    for topic in (s.events_topic, s.updates_topic):
        steps.append(Binding("bindings", "topic", topic, "roles/pubsub.publisher", runtime_member,
                             ("pubsub", "topics", "add-iam-policy-binding", topic, f"--member={runtime_member}",
                              "--role=roles/pubsub.publisher", proj),
                             "publish stage events and release updates; only on these two topics"))
    steps.append(Binding("bindings", "service-account", config.pipeline_sa, "roles/iam.serviceAccountUser",
                         runtime_member,
                         ("iam", "service-accounts", "add-iam-policy-binding", config.pipeline_sa,
                          f"--member={runtime_member}", "--role=roles/iam.serviceAccountUser",
                          "--condition=None", proj),
                         "start builds and jobs that run as the pipeline account (actAs), on that account only"))
    for account in config.app_service_accounts:
        steps.append(Binding("bindings", "service-account", account, "roles/iam.serviceAccountUser", runtime_member,
                             ("iam", "service-accounts", "add-iam-policy-binding", account,
                              f"--member={runtime_member}", "--role=roles/iam.serviceAccountUser",
                              "--condition=None", proj),
                             "deploying a Cloud Run service needs actAs on the account its revisions run as"))
    for secret in function_secrets(config):
        steps.append(_secret_binding(p, secret, SECRET_ACCESSOR_ROLE, runtime_member,
                                     "the functions read their own secrets, no others"))
    steps.append(Binding("bindings", "tasks-queue", s.probe_queue, "roles/cloudtasks.enqueuer", runtime_member,
                         ("tasks", "queues", "add-iam-policy-binding", s.probe_queue, f"--location={r}",
                          f"--member={runtime_member}", "--role=roles/cloudtasks.enqueuer", proj),
                         "dispatch and probe schedule probes; only on the probe queue"))
    steps.append(Binding("bindings", "service-account", config.invoker_sa, "roles/iam.serviceAccountUser",
                         runtime_member,
                         ("iam", "service-accounts", "add-iam-policy-binding", config.invoker_sa,
                          f"--member={runtime_member}", "--role=roles/iam.serviceAccountUser", "--condition=None",
                          proj),
                         "a task carrying an OIDC token of the invoker account needs actAs on it"))

    # -- the invoker account and the Pub/Sub service agent
    steps.append(Binding("bindings", "service-account", config.invoker_sa, "roles/iam.serviceAccountTokenCreator",
                         pubsub_agent,
                         ("iam", "service-accounts", "add-iam-policy-binding", config.invoker_sa,
                          f"--member={pubsub_agent}", "--role=roles/iam.serviceAccountTokenCreator",
                          "--condition=None", proj),
                         "Pub/Sub mints the OIDC token of its push requests as the invoker account"))
    steps.append(Binding("bindings", "topic", config.dead_letter_topic, "roles/pubsub.publisher", pubsub_agent,
                         ("pubsub", "topics", "add-iam-policy-binding", config.dead_letter_topic,
                          f"--member={pubsub_agent}", "--role=roles/pubsub.publisher", proj),
                         "Pub/Sub forwards undeliverable messages to the dead-letter topic"))

    # -- functions (deploy is create-or-update: it converges, so it runs every time)
    env = ",".join(f"{k}={v}" for k, v in function_env(config).items())
    for fn in functions(config):
        command = ["functions", "deploy", fn.name, "--gen2", f"--runtime={PYTHON_RUNTIME}", f"--region={r}",
                   f"--source={config.source_dir}", f"--entry-point={fn.entry_point}",
                   f"--service-account={config.runtime_sa}", f"--set-env-vars={env}", f"--timeout={fn.timeout_s}s",
                   f"--build-service-account=projects/{p}/serviceAccounts/{config.builder_sa}",
                   f"--docker-repository=projects/{p}/locations/{r}/repositories/{FUNCTIONS_REPOSITORY}"]
        if fn.secrets:
            command.append("--set-secrets=" + ",".join(f"{var}={secret}:latest" for var, secret in fn.secrets))
        if fn.trigger_topic:
            command += [f"--trigger-topic={fn.trigger_topic}", f"--trigger-service-account={config.invoker_sa}",
                        "--ingress-settings=internal-only", "--no-allow-unauthenticated"]
            if fn.retry:  # absent means no retry (gcloud has no --no-retry)
                command.append("--retry")
        else:
            command += ["--trigger-http", "--ingress-settings=all",
                        "--allow-unauthenticated" if fn.public else "--no-allow-unauthenticated"]
        steps.append(Action("functions", "function", fn.name, (*command, proj), fn.why))
    steps.append(Binding("delivery", "function", "probe", "roles/run.invoker", invoker_member,
                         ("functions", "add-invoker-policy-binding", "probe", f"--region={r}",
                          f"--member={invoker_member}", proj),
                         "Cloud Tasks calls the probe function with the invoker account's OIDC token, nobody else"))
    for email in operator_emails(config.settings):
        member = f"user:{email}"
        steps.append(Binding("delivery", "function", "operator", "roles/run.invoker", member,
                             ("functions", "add-invoker-policy-binding", "operator", f"--region={r}",
                              f"--member={member}", proj),
                             "an operator listed in RELEASE_OPERATORS may call the operator function"))
    for fn in functions(config):
        if not fn.trigger_topic:
            continue
        subscription = f"${{SUBSCRIPTION:{fn.name}}}"
        steps.append(Binding("delivery", "function", fn.name, "roles/run.invoker", invoker_member,
                             ("functions", "add-invoker-policy-binding", fn.name, f"--region={r}",
                              f"--member={invoker_member}", proj),
                             "Eventarc's pushes may invoke this function, nobody else"))
        if not fn.retry or fn.trigger_topic == config.dead_letter_topic:
            # A lost tick is replaced by the next one; the drain must not feed its own topic. Neither
            # gets a dead-letter policy, but a push must still not be redelivered while it runs.
            steps.append(Action("delivery", "subscription-policy", subscription,
                                ("pubsub", "subscriptions", "update", subscription,
                                 f"--ack-deadline={PUSH_ACK_DEADLINE_S}", proj),
                                f"{fn.name} may run {fn.timeout_s} s: the push must not be redelivered meanwhile"))
            continue
        steps.append(Action("delivery", "subscription-policy", subscription,
                            ("pubsub", "subscriptions", "update", subscription, f"--ack-deadline={PUSH_ACK_DEADLINE_S}",
                             f"--dead-letter-topic={config.dead_letter_topic}",
                             f"--max-delivery-attempts={MAX_DELIVERY_ATTEMPTS}",
                             f"--min-retry-delay={MIN_RETRY_DELAY}", f"--max-retry-delay={MAX_RETRY_DELAY}", proj),
                            f"ack deadline ({fn.timeout_s} s of work fit), dead-letter policy and backoff on the push "
                            f"subscription of {fn.name}'s trigger"))
        steps.append(Binding("delivery", "subscription", subscription, "roles/pubsub.subscriber", pubsub_agent,
                             ("pubsub", "subscriptions", "add-iam-policy-binding", subscription,
                              f"--member={pubsub_agent}", "--role=roles/pubsub.subscriber", proj),
                             "Pub/Sub acknowledges a message it moved to the dead-letter topic"))

    # -- the tick
    steps.append(Resource("delivery", "scheduler-job", config.scheduler_job,
                          ("scheduler", "jobs", "describe", config.scheduler_job, f"--location={r}", proj),
                          ("scheduler", "jobs", "create", "pubsub", config.scheduler_job, f"--location={r}",
                           "--schedule=* * * * *", f"--topic={config.tick_topic}", "--message-body=tick",
                           "--time-zone=Etc/UTC", proj),
                          "sweep runs every minute, the safety net: polls stages whose probes went quiet, "
                          "enforces stage timeouts"))
    return Plan(project=p, steps=tuple(steps))


_SEED_WHY = {
    "roles/artifactregistry.writer": "build & push",
    "roles/run.admin": "deployments",
    "roles/run.developer": "deployments",
    "roles/cloudsql.client": "migrate jobs",
    "roles/cloudsql.editor": "vector schema migrations",
    "roles/redis.admin": "Memorystore connections",
    "roles/compute.networkUser": "Serverless VPC Access",
}


def _project_binding(project: str, role: str, member: str, why: str) -> Binding:
    return Binding("bindings", "project", project, role, member,
                   ("projects", "add-iam-policy-binding", project, f"--member={member}", f"--role={role}",
                    "--condition=None"), why)


def _repository_binding(project: str, repository: str, location: str, role: str, member: str, why: str) -> Binding:
    return Binding("bindings", "artifact-repository", repository, role, member,
                   ("artifacts", "repositories", "add-iam-policy-binding", repository, f"--location={location}",
                    f"--member={member}", f"--role={role}", f"--project={project}"), why)


def _secret_binding(project: str, secret: str, role: str, member: str, why: str) -> Binding:
    return Binding("bindings", "secret", secret, role, member,
                   ("secrets", "add-iam-policy-binding", secret, f"--member={member}", f"--role={role}",
                    "--condition=None", f"--project={project}"), why)
