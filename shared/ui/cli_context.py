"""What every ``relctl`` command gets: the Context (settings, store, output), exit codes, UsageError."""
from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from shared import bootstrap
from shared.app.config import Settings
from shared.domain.errors import PipelineError
from shared.ui.cli_format import colour_wanted, dumps
from shared.ui.dashboard import release_progress, with_github

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(PipelineError):
    """The command line asks for something that cannot exist (exit 2, like argparse's own errors)."""


class CommandFailed(PipelineError):
    """A command that ran but did not get what it asked for: refused (exit 1) or timed out (exit 3).
    Raised, not printed, so every exit says it the same way (one line; under --json ``{"error", "exit"}``)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Context:
    """What the commands need, built on first use (a `validate` never touches Google)."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    json: bool = False  # --json: one JSON document (watch: one per line), times in ISO 8601
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    stdin: TextIO = field(default_factory=lambda: sys.stdin)  # where a confirmation is asked (a terminal only)

    def confirm(self, question: str) -> bool:
        """Ask on the terminal; False without one (a script must say --yes instead)."""
        if not self.stdin.isatty():
            return False
        self.print(question + " [y/N] ")
        return self.stdin.readline().strip().lower() in ("y", "yes")

    @functools.cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @functools.cached_property
    def store(self):
        """Wired by the composition root (shared/bootstrap.py), like every entry point's."""
        require_emulator("FIRESTORE_EMULATOR_HOST")
        return bootstrap.firestore_store(self.settings)

    @functools.cached_property
    def apps(self):
        """``apps/{app}`` records (stage medians for the ETA), on the store's Firestore client."""
        return bootstrap.app_records_on(self.store.client, self.settings)

    def progress(self, state, pipeline) -> dict:
        github = bootstrap.github_reports_on(self.store.client, self.settings)
        return with_github(release_progress(state, pipeline, self.apps, time.time()), github, state)

    @property
    def local(self) -> bool:
        """Against the local stack, whose token issuer signs for whoever ``--as`` names."""
        return bool(self.settings.operator_token_url)

    def print(self, *parts: Any) -> None:
        print(*parts, file=self.out, flush=True)

    @functools.cached_property
    def colour(self) -> bool:
        return not self.json and colour_wanted(self.out)

    def emit(self, data: Any, text: str) -> None:
        """The command's answer: ``data`` as JSON under --json, else ``text``."""
        self.print(dumps(data) if self.json else text)


def require_emulator(variable: str, timeout_s: float = 2.0) -> None:
    """Fail fast when an emulator host is set but nothing listens there: the client
    libraries would retry UNAVAILABLE for minutes before saying anything."""
    host_port = os.environ.get(variable, "")
    if not host_port:
        return
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{variable}={host_port} is set but no emulator answers there ({exc})") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 500:
        raise argparse.ArgumentTypeError(f"{value} is not from 1 to 500")
    return value
