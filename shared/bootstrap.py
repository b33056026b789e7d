"""The composition root: the one place that wires real adapters to the service code.

Every entry point gets its object graph here: the functions (functions/main.py), relctl
(shared/ui/cli_context.py: ``firestore_store``, ``app_records_on``), the local demo and the
benchmarks (``firestore_store``, ``make_dispatcher``: the dispatcher's wiring around the parts
they replace). Nothing is patched after construction.

Each cached function builds its part once for the life of the function instance. What a path
may never touch is handed out as ``Lazy(factory)`` (shared/adapters/lazy.py, the one laziness
mechanism): cold start pays only for what the invoked function needs (the HTTP push trigger
never imports the Cloud Build or Cloud Run clients, for instance).
"""
from __future__ import annotations

import functools
import logging

from shared.adapters.lazy import Lazy
from shared.app.config import Settings
from shared.app.ports import SystemClock


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def store():
    return firestore_store(settings())


def firestore_store(config: Settings):
    """The release store on a new Firestore client (relctl and the demo build theirs here too)."""
    from google.cloud import firestore

    from shared.adapters.firestore_store import FirestoreStore

    return FirestoreStore(firestore.Client(project=config.project), config)


def app_records_on(client, config: Settings):
    """``apps/{app}`` on a Firestore client already made (the store's)."""
    from shared.adapters.firestore_apps import FirestoreAppRecords

    return FirestoreAppRecords(client, config)


@functools.cache
def plain_publisher():
    """Publishes what it is given as it is: the dead-letter re-drive, which must never sign a
    completion that arrived unsigned."""
    from shared.adapters.pubsub_publisher import PubSubPublisher

    return PubSubPublisher(settings())


@functools.cache
def publisher():
    from shared.app.signing_publisher import SigningPublisher

    # Every stage.finished our code makes leaves signed with the link keys; the dispatcher believes no other.
    return SigningPublisher(plain_publisher(), link_keyring)


@functools.cache
def pipeline():
    from shared.domain.pipeline import load_pipeline

    return load_pipeline(settings().pipeline_file)


@functools.cache
def executors():
    from shared.adapters.executors import build_executors

    return build_executors(settings(), histories=revision_histories())


@functools.cache
def revision_histories():
    """One revision history per Cloud Run service (``revision_history/{service}``)."""
    from shared.adapters.firestore_revision_history import FirestoreRevisionHistories

    return FirestoreRevisionHistories(store().client, settings())


@functools.cache
def notifier():
    from shared.adapters.notify import build_notifier

    recipients = tuple(a.strip() for a in settings().notify_emails.replace(";", ",").split(",") if a.strip())
    return build_notifier(settings(), recipients=recipients)


@functools.cache
def link_senders():
    """Personal channels for approval links: mail when RELEASE_SMTP_HOST is set."""
    from shared.adapters.notify.multi import link_senders_from_settings

    return tuple(link_senders_from_settings(settings()))


@functools.cache
def approvals():
    from shared.app.approvals import ApprovalService

    compare_changes = None
    if settings().github_token:
        from shared.adapters.github_compare import GitHubCompare
        from shared.app.compare import compared_changes, prod_commit

        comparer = GitHubCompare(settings().github_token, settings().github_api_url)

        def compare_changes(release):
            return compared_changes(release, comparer, prod_commit(app_records(), store(), release.pipeline_name))

    return ApprovalService.from_settings(settings(), store=approval_store(), publisher=publisher(),
                                         clock=SystemClock(), releases=store(), link_senders=link_senders(),
                                         keyring=Lazy(link_keyring),
                                         dead_letters=dead_letter_store(),
                                         prod_runs=production_runs,
                                         compare_changes=compare_changes)


@functools.cache
def approval_pages():
    """The on_approval function: its pages and request parsing around the approval service."""
    from shared.ui.approval_http import ApprovalPages

    return ApprovalPages(approvals())


@functools.cache
def approval_store():
    from google.cloud import firestore

    from shared.adapters.firestore_approvals import FirestoreApprovalStore

    return FirestoreApprovalStore(firestore.Client(project=settings().project), settings())


@functools.cache
def dispatcher():
    def roll_back(service, to=None):
        from shared.adapters.executors.run_services import rollback

        # Only to a revision that completed a release: the one recorded as serving before, else the last.
        return rollback(settings(), service, to, history=revision_histories().read(service), automatic=True)

    # Approvals and notices (their pages, mail and webhooks) are wired when an event first needs them.
    return make_dispatcher(store(), publisher(), executors(), settings(), approvals=Lazy(approvals),
                           notifier=Lazy(notifier), clock=SystemClock(), roll_back=roll_back,
                           operator_requests=operator_requests(), probes=probe_scheduler(),
                           completion_keys=link_keyring(), histories=revision_histories(),
                           reporting=github_reporting())


def make_dispatcher(store, publisher, executors, config: Settings, *, approvals, notifier, clock, roll_back,
                    operator_requests=None, probes=None, completion_keys=None, histories=None,
                    reporting=None):
    """The dispatcher around a Firestore store: its locks, dead letters and message decoder on the
    store's client. The functions' ``dispatcher()`` passes the real parts; a benchmark passes its
    own store wrapper, executors, approvals, notifier, clock and roll-back."""
    from shared.adapters.cloud_build_notification import decode_message
    from shared.adapters.firestore_apps import service_lock_records
    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters
    from shared.app.dispatcher import Dispatcher
    from shared.app.locks import EnvironmentLocks

    client = getattr(store, "inner", store).client  # a counting wrapper keeps the store as ``inner``
    locks = EnvironmentLocks(app_records_on(client, config), publisher, config, service_lock_records(client, config))
    return Dispatcher(store, publisher, executors, approvals, notifier, clock, config, locks,
                      FirestoreDeadLetters(client, config), roll_back=roll_back,
                      operator_requests=operator_requests, probes=probes,
                      completion_keys=completion_keys, histories=histories, reporting=reporting,
                      decode=decode_message)


@functools.cache
def github_reports():
    """What reached GitHub per release (the dashboard reads it without the App's secrets)."""
    return github_reports_on(store().client, settings())


def github_reports_on(client, config: Settings):
    """``github_reports/{release}`` on a Firestore client already made (relctl reads it on the store's)."""
    from shared.adapters.firestore_github_reports import FirestoreGitHubReports

    return FirestoreGitHubReports(client, config)


@functools.cache
def github_reporting():
    """GitHub deployments and commit statuses as the App, or None when no App is configured."""
    if not (settings().github_app_id and settings().github_app_key):
        return None
    from shared.adapters.github_app import GitHubApp
    from shared.app.github_reporting import GitHubReporting

    repositories = tuple(r.strip().lower() for r in settings().github_report_repositories.replace(";", ",").split(",") if r.strip())
    return GitHubReporting(GitHubApp(settings().github_app_id, settings().github_app_key, settings().github_api_url),
                           github_reports(), SystemClock(),
                           dashboard_url=settings().public_base_url, repositories=repositories)


@functools.cache
def dead_letter_store():
    from shared.adapters.firestore_dead_letters import FirestoreDeadLetters

    return FirestoreDeadLetters(store().client, settings())


@functools.cache
def dead_letters():
    """The dead-letter API (keep, drain, list, re-drive) over the one store."""
    from shared.adapters.cloud_build_notification import decode_message
    from shared.app.dead_letters import DeadLetters

    return DeadLetters(dead_letter_store(), plain_publisher(), SystemClock(), settings(), decode_message)


@functools.cache
def app_records():
    """``apps/{app}``: locks, version floor, stage medians (read by the dashboard for the ETA)."""
    return app_records_on(store().client, settings())


@functools.cache
def service_lock_records():
    """``service_locks/{service}``: Cloud Run services shared by applications take turns."""
    from shared.adapters.firestore_apps import service_lock_records as records

    return records(store().client, settings())


@functools.cache
def probe_scheduler():
    from shared.adapters.cloud_tasks import CloudTasksScheduler

    return CloudTasksScheduler(settings(), keyring=link_keyring())


@functools.cache
def link_keyring():
    """The link keys (Secret Manager): approval links, probe tasks and completions each sign
    with a key derived from them for that use alone."""
    from shared.domain.approval_tokens import Keyring

    return Keyring.from_setting(settings().approval_keys)


@functools.cache
def interval_analysis():
    """The analysis each probe interval of a check calls: (check config, interval) -> verdict.

    Checks with ``params.analysis`` are judged on Cloud Monitoring and Cloud Logging telemetry
    (shared/app/canary_analysis.py); checks without it by their GETs alone."""
    from shared.app.canary_analysis import TelemetryAnalysis

    return TelemetryAnalysis(make_telemetry=telemetry)


@functools.cache
def telemetry():
    """Cloud Monitoring and Cloud Logging for the canary analysis (made when a check first needs it)."""
    from shared.adapters import gcp_clients
    from shared.adapters.telemetry import CloudTelemetry

    config = settings()
    return CloudTelemetry(config.project, gcp_clients.monitoring_metrics(config), gcp_clients.logging_entries(config))


@functools.cache
def probe_service():
    from shared.adapters.http_prober import RequestsProber
    from shared.app.probing import ProbeService

    # The store and the executors are wired on first use: a check's probe (most probes) only
    # GETs and schedules, so it never imports the Firestore client or the executors' API
    # clients; a poll reads the pinned pipeline and asks its kind's executor.
    return ProbeService(Lazy(store), Lazy(executors), publisher(), probe_scheduler(),
                        RequestsProber(id_tokens=id_token_source()), SystemClock(), settings(),
                        analyse=interval_analysis())


def id_token_source():
    """ID tokens for checks of private services: the metadata server's on GCP, the local issuer's locally."""
    from shared.adapters.id_token_source import google_id_tokens, local_issuer_id_tokens

    config = settings()
    if config.id_token_url:
        return local_issuer_id_tokens(config.id_token_url, config.require("id_token_account"))
    return google_id_tokens()


@functools.cache
def operator_requests():
    from shared.adapters.firestore_operator_requests import FirestoreOperatorRequests

    return FirestoreOperatorRequests(store().client, settings())


@functools.cache
def operator():
    """The operator function: token verifier, the operator list, and every registered action."""
    from shared.adapters.id_tokens import GoogleIdTokenVerifier
    from shared.app.operator import OperatorService, register_release_actions

    s = settings()
    verifier = GoogleIdTokenVerifier(s.operator_audience, s.operator_certs_url,
                                     tuple(i.strip() for i in s.operator_issuers.split(",")))
    from shared.app.locks import EnvironmentLocks
    from shared.app.manual_rollback import register_rollback
    from shared.app.operator_actions import (register_approval_actions, register_cancel,
                                             register_dead_letter_actions, register_freeze, register_skip_bake)

    service = OperatorService.from_settings(s, verifier, operator_requests(), SystemClock())
    # approve / reject by identity: the one approval service, the same store and rules as the links
    # (this function is given no link key, RELEASE_APPROVAL_KEYS is empty here: it never signs).
    register_approval_actions(service, approvals())
    register_cancel(service, store(), publisher(), s.events_topic)
    register_dead_letter_actions(service, dead_letters())
    register_freeze(service, EnvironmentLocks(app_records(), publisher(), s, service_lock_records()), pipeline().name,
                    lambda: known_applications(s))
    register_skip_bake(service, store(), publisher(), s.events_topic)
    register_rollback(service, store(), publisher(), s.events_topic, move_traffic_back, revision_histories(),
                      SystemClock())
    return register_release_actions(service, store(), publisher(), s)


def known_applications(s) -> set[str]:
    """The applications there are: the configured pipeline files' and those of recent releases."""
    from shared.domain.pipeline import load_pipeline

    return {load_pipeline(p).name for p in s.pipeline_paths()} | {r.pipeline_name for r in store().list_releases(200)}


def production_runs(release) -> str:
    """What prod serves now (Cloud Run), for the approval page; the version floor when Cloud Run cannot say."""
    from shared.adapters.cloud_run_reader import CloudRunServiceReader
    from shared.app.stage_medians import prod_runs_text as floor_text
    from shared.app.where import prod_runs_text, what_runs_where as placements
    from shared.domain.errors import PipelineError

    try:
        pipeline = store().load_pipeline(release.pipeline_digest)
        return prod_runs_text(placements(pipeline, CloudRunServiceReader(settings()), store().list_releases(200)))
    except PipelineError as exc:
        logging.getLogger(__name__).warning("production runs of %s: %s", release.release_id, exc)
        return floor_text(app_records(), release.pipeline_name) + " (what entered prod last; Cloud Run did not answer)"


def what_runs_where() -> dict:
    """Per application (each configured pipeline file): what its services serve now and which release made it."""
    from shared.adapters.cloud_run_reader import CloudRunServiceReader
    from shared.app.where import what_runs_where as placements
    from shared.domain.pipeline import load_pipeline

    s, recent = settings(), store().list_releases(200)
    reader = CloudRunServiceReader(s)
    return {p.name: placements(p, reader, recent) for p in map(load_pipeline, s.pipeline_paths())}


def move_traffic_back(service: str, how) -> dict:
    """The manual rollback's traffic move (the operator function's action ``rollback``)."""
    from shared.adapters.executors.registry_rollback import rollback_from_registry, rollback_to_tag
    from shared.adapters.executors.run_services import rollback

    if how.get("to_tag"):
        return rollback_to_tag(settings(), service, how["to_tag"], image=how.get("image"), wait_s=0,
                               dry_run=bool(how.get("dry_run")))
    if how.get("from_registry"):
        return rollback_from_registry(settings(), service, image=how.get("image"), wait_s=0,
                                      dry_run=bool(how.get("dry_run")))
    return rollback(settings(), service, how.get("to_revision"), history=how.get("history"),
                    force=bool(how.get("force")), reason=str(how.get("reason") or ""),
                    dry_run=bool(how.get("dry_run")))


@functools.cache
def sweeper():
    """The sweep function's one call: poll running stages, enforce deadlines, announce stalls."""
    from shared.app.sweeper import sweep

    # The notifiers are built only when a stall is to be announced (cold start).
    run = functools.partial(sweep, store(), executors(), publisher(), SystemClock(), settings(),
                            notifier=Lazy(notifier))
    reporting = github_reporting()
    if reporting is None:
        return run

    def sweep_then_retry_github_reports():
        report = run()
        # GitHub reports that wait for a retry, also those of releases that have ended
        report.github_retried = reporting.retry_due(store())
        return report

    return sweep_then_retry_github_reports


@functools.cache
def dashboard():
    """The dashboard function: (method, path, query) -> (status, body, headers)."""
    from shared.ui.dashboard import handle

    return functools.partial(handle, store=store(), apps=app_records(), github=github_reports(),
                             where=what_runs_where)


@functools.cache
def push_service():
    from shared.app.push import PushService

    from shared.app.repositories import RepositoryMap

    s = settings()
    pipelines = RepositoryMap.from_files(s.pipeline_paths())
    return PushService(store(), publisher(), pipelines, SystemClock(), s, apps=app_records())


def release_notes(release_id: str) -> str:
    """The notes of a stored release, over the store wired here (what `make demo` prints last)."""
    from shared.ui.notes import load_release, render

    return render(*load_release(store(), release_id))


def reset() -> None:
    """Forget every wired object (tests change the environment between apps)."""
    for name, value in list(globals().items()):
        if hasattr(value, "cache_clear"):
            value.cache_clear()
