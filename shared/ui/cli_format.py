"""How ``relctl`` prints: JSON with ISO 8601 times, colour only on a terminal, the help's epilog."""
from __future__ import annotations

import json
import os
from typing import Any, TextIO

from shared.ui.notes import iso

# Keys whose numbers are epoch seconds in the stored documents; --json prints them as ISO 8601.
TIME_KEYS = ("at", "deadline", "expires_at")
ANSI = {"succeeded": "32", "failed": "31", "stopped": "31", "running": "34", "waiting": "33",
        "awaiting_approval": "33", "queued": "35", "superseded": "2", "skipped": "2", "pending": "2",
        "cancelled": "2", "frozen": "33"}


def iso_times(value: Any, key: str = "") -> Any:
    """``value`` with every epoch time (keys ``*_at``, ``at``, ``deadline``) as an ISO 8601 UTC string."""
    if isinstance(value, dict):
        return {k: iso_times(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [iso_times(v, key) for v in value]
    if (key.endswith("_at") or key in TIME_KEYS) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(value)
    return value


def dumps(data: Any) -> str:
    return json.dumps(iso_times(data), indent=2, sort_keys=True, default=str)


def colour_wanted(out: TextIO) -> bool:
    """Colour on a terminal only, and never when NO_COLOR is set to anything (https://no-color.org)."""
    return bool(getattr(out, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def paint(text: str, status: str, enabled: bool) -> str:
    code = ANSI.get(status.strip())
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


EPILOG = """\
examples:
  relctl list --limit 5
  relctl show acme-app-3a4c8e858d10 --json
  relctl watch acme-app-3a4c8e858d10 --timeout 600
  relctl approve acme-app-3a4c8e858d10 --reason "staging evidence checked"
  relctl reject acme-app-3a4c8e858d10 --reason "the migration is not reversible"
  relctl replay acme-app-3a4c8e858d10 staging-smoke --reason "flaky health check fixed"
  relctl validate pipelines/sample.yaml

environment:
  RELEASE_PROJECT, RELEASE_COLLECTION_PREFIX, RELEASE_EVENTS_TOPIC   where releases live
  RELEASE_PIPELINE_FILE             the pipeline (validate, preflight; default pipelines/noesis2.yaml)
  RELEASE_OPERATOR_URL              the operator function (approve, reject, replay, chaos)
  RELEASE_OPERATOR_TOKEN_URL, RELEASE_OPERATOR_EMAIL   local stack only: its ID token issuer
  RELEASE_CLOUD_RUN_ENDPOINT, RELEASE_IAM_ENDPOINT     local stand-in (rollback, preflight)
  FIRESTORE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST        the emulators; unset on GCP
  NO_COLOR                          no colour even on a terminal
  RELCTL_DEBUG=1                    show the traceback of an unexpected error

exit status:
  0 done   1 failed, refused or not found   2 usage error or invalid pipeline file
  3 timed out waiting   130 interrupted
"""
