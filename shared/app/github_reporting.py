"""Sends what GitHub should show of a release (shared/domain/github_reports.py), after the state write.

Why it never holds a release: the dispatcher calls ``sync`` only after the transition is written and
its commands carried out, catches everything, and a sync makes one try per call. A call that fails
with a 5xx, a timeout or a rate limit ends the sync and records when to try again (what GitHub asked
for in ``Retry-After``/``X-RateLimit-Reset``, else a doubling backoff); the sweeper's tick runs the
due syncs (``retry_due``), also for a release that has ended. The record (``github_reports/{id}``)
keeps the keys sent, the deployment id per environment, and the last failure, which the dashboard
and ``relctl show`` display.

Deduplication: a report is sent when its key is not recorded; each success is recorded before the
next call, and the record is leased, so two handlers of the same release never send the same report.
A deployment whose creation was interrupted before its id was recorded is found again by its
``payload.release_id`` before a new one is made.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import Any, Callable

from shared.app.ports import Clock, GitHubDeployments, GitHubLedger, ReleaseStore
from shared.domain.errors import GitHubNotInstalled, GitHubRefused, GitHubRetry, PipelineError
from shared.domain.github_reports import CommitStatus, CreateDeployment, DeploymentStatus, reports_for
from shared.domain.pipeline import Pipeline
from shared.domain.state import ReleaseState

log = logging.getLogger(__name__)

LEASE_S = 30.0
FIRST_BACKOFF_S = 2.0
MAX_BACKOFF_S = 600.0


def empty_record() -> dict[str, Any]:
    return {"sent": [], "deployments": {}, "retry_at": None, "failures": 0, "last_error": "", "refused": [],
            "not_installed": False}


def backoff_s(failures: int, asked_s: float) -> float:
    """What GitHub asked for, else 2, 4, 8 … seconds, at most 10 minutes."""
    return max(asked_s, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(0, failures - 1)))


@dataclass
class GitHubReporting:
    github: GitHubDeployments
    ledger: GitHubLedger
    clock: Clock
    dashboard_url: str = ""
    # Repositories configured for reporting (case-folded "owner/name"); empty: every repository the
    # App is installed on.
    repositories: tuple[str, ...] = ()
    on_sent: Callable[[str, str], None] | None = None  # (release id, key), for the log

    def sync(self, pipeline: Pipeline, state: ReleaseState) -> str:
        """Send what is due and not sent yet; returns what happened, for the log. Never raises."""
        if self.repositories and state.repo.lower() not in self.repositories:
            return "repository not configured for GitHub reporting"
        try:
            return self._sync(pipeline, state)
        except Exception as exc:  # noqa: BLE001 (reporting never fails a release)
            log.warning("release %s: GitHub reporting failed: %s", state.release_id, type(exc).__name__)
            return f"failed: {type(exc).__name__}"

    def retry_due(self, store: ReleaseStore, limit: int = 20) -> int:
        """The sweeper's part: sync every release whose retry is due; how many were synced."""
        synced = 0
        for release_id in self.ledger.due(self.clock.now(), limit):
            got = store.get(release_id)
            if got is None:
                continue
            state = got[0]
            self.sync(store.load_pipeline(state.pipeline_digest), state)
            synced += 1
        return synced

    def _sync(self, pipeline: Pipeline, state: ReleaseState) -> str:
        now = self.clock.now()
        reports = reports_for(pipeline, state, self.dashboard_url)
        record = self.ledger.get(state.release_id)
        if record is not None and (record.get("not_installed") or (
                record.get("retry_at") is None and not [r for r in reports if r.key not in record["sent"]])):
            return "nothing new"
        if record is not None and record.get("failures") and (record.get("retry_at") or 0) > now:
            return "waiting to retry"
        record = self.ledger.claim(state.release_id, now, LEASE_S)
        if record is None:
            return "another handler is reporting; it will be followed by another sync"
        if record.get("not_installed"):
            self.ledger.save(state.release_id, record)
            return "not installed"
        sent, refused = 0, ""
        try:
            for report in reports:
                if report.key in record["sent"]:
                    continue
                try:
                    self._send(state, report, record)
                except GitHubNotInstalled:
                    record["not_installed"] = True
                    return "the App is not installed on the repository: nothing reported"
                except GitHubRefused as exc:  # trying again would not help: recorded, shown, passed over
                    record["refused"] = [*record["refused"], f"{report.key}: {exc}"][-10:]
                    refused = str(exc)
                record["sent"].append(report.key)
                sent += 1
                if self.on_sent:
                    self.on_sent(state.release_id, report.key)
            record.update(failures=0, retry_at=None, last_error=refused)
            return f"{sent} sent"
        except GitHubRetry as exc:
            record["failures"] = int(record.get("failures") or 0) + 1
            record["retry_at"] = now + backoff_s(record["failures"], exc.retry_after_s)
            record["last_error"] = f"{exc} (next try in {record['retry_at'] - now:.0f} s)"
            log.warning("release %s: GitHub reporting waits: %s", state.release_id, record["last_error"])
            return f"{sent} sent; waiting to retry"
        except PipelineError as exc:
            record["failures"] = int(record.get("failures") or 0) + 1
            record["retry_at"] = now + backoff_s(record["failures"], 0)
            record["last_error"] = str(exc)
            return f"{sent} sent; {exc}"
        finally:
            self.ledger.save(state.release_id, record)

    def _send(self, state: ReleaseState, report: Any, record: dict[str, Any]) -> None:
        if isinstance(report, CreateDeployment):
            found = self.github.find_deployment(state.repo, report.ref, report.environment, state.release_id)
            record["deployments"][report.environment] = found or self.github.create_deployment(state.repo,
                                                                                             report.body())
        elif isinstance(report, DeploymentStatus):
            deployment = record["deployments"].get(report.environment)
            if deployment is None:  # its creation was refused: nothing to attach the status to
                raise GitHubRefused(f"no deployment for {report.environment}")
            self.github.create_deployment_status(state.repo, int(deployment), report.body())
        elif isinstance(report, CommitStatus):
            self.github.create_commit_status(state.repo, report.sha, report.body())


def reporting_text(record: dict[str, Any] | None) -> str:
    """One line for the dashboard and ``relctl show``: what reached GitHub, and a call that keeps
    failing (with when it is tried again). "" when nothing is reported (no App, not installed)."""
    if not record or record.get("not_installed"):
        return ""
    sent = len(record.get("sent") or [])
    envs = ", ".join(sorted(record.get("deployments") or {}))
    text = f"GitHub: {sent} update(s) sent" + (f"; deployments: {envs}" if envs else "")
    if record.get("failures"):
        when = datetime.fromtimestamp(float(record["retry_at"] or 0), timezone.utc).strftime("%H:%M:%S UTC")
        text += f"; NOT SENT YET, failing {record['failures']} time(s): {record.get('last_error', '')}; next try {when}"
    elif record.get("last_error"):
        text += f"; refused by GitHub: {record['last_error']}"
    return text
