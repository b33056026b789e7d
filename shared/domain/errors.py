"""One exception base for everything the orchestrator raises on purpose.

Messages say what failed and, where known, for which release and stage, because
they end up in HTTP answers, dead-letter records and CLI output.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Base of every deliberate error of the orchestrator."""

    def __init__(self, message: str, *, release_id: str | None = None, stage: str | None = None):
        where = ""
        if release_id:
            where += f"release {release_id}"
        if stage:
            where += (", " if where else "") + f"stage {stage}"
        super().__init__(f"{where}: {message}" if where else message)
        self.release_id = release_id
        self.stage = stage


class DefinitionError(PipelineError):
    """The pipeline file is invalid; the message points at the stage and field."""


class ConfigError(PipelineError):
    """A required setting is missing or malformed."""


class MalformedEvent(PipelineError):
    """An event cannot be parsed. Acknowledged and recorded, never retried."""


class WebhookRejected(PipelineError):
    """A webhook request is refused; carries the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class StaleWrite(PipelineError):
    """The release document changed since it was read; read again and re-decide."""


class DocumentTooLarge(PipelineError):
    """Firestore refused a write because the document would pass its 1 MiB limit."""


class TransientError(PipelineError):
    """A dependency is briefly unavailable; the event must be redelivered."""


class ExecutorError(PipelineError):
    """An executor could not start or observe a stage (permanent; fails the stage)."""


class ResourceNotFound(ExecutorError):
    """What an executor or a rollback names does not exist (a service, a revision, an image tag):
    the operator function answers 404 for it, not the 409 of a refused change."""


class RequestRefused(PipelineError):
    """An HTTP request is refused (operator function); carries the status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class NotifyError(PipelineError):
    """A channel could not deliver (the LinkSender and Notifier ports raise it). The message never
    holds a webhook URL or secret."""


# GitHub reporting (shared/app/github_reporting.py)
class GitHubRetry(PipelineError):
    """A GitHub call worth trying again later (5xx, timeout, rate limit); ``retry_after_s`` is what
    GitHub asked for (0 when it said nothing)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GitHubRefused(PipelineError):
    """GitHub refused the call (a 4xx other than a rate limit): trying again would not help."""


class GitHubNotInstalled(GitHubRefused):
    """The App is not installed on the repository: it gets no reports, silently."""
