"""``ServiceReader`` on the Cloud Run Admin API v2: what each service serves now.

GetService gives the traffic statuses (what serves, not what was asked for); GetRevision
gives each serving revision's image, labels (version, commit) and create time. Read only:
the caller needs ``run.services.get`` and ``run.revisions.get`` (``roles/run.viewer``).
"""
from __future__ import annotations

from typing import Any, Mapping

from google.api_core import exceptions as gexc

from shared.adapters.api_calls import ApiCaller
from shared.adapters.executors import default_clients
from shared.adapters.executors.run_services import service_path
from shared.adapters.executors.traffic import current_split
from shared.app.config import Settings
from shared.app.ports import ServingRevision


class CloudRunServiceReader:
    def __init__(self, settings: Settings, clients: Mapping[str, Any] | None = None, caller: ApiCaller | None = None):
        self.settings = settings
        self.clients = clients or default_clients(settings, ("services", "revisions"))
        self.caller = caller or ApiCaller()

    def serving(self, service: str) -> list[ServingRevision]:
        name = service_path(self.settings, service)

        def read() -> list[ServingRevision]:
            try:
                current = self.clients["services"].get_service(name=name, retry=None, timeout=self.caller.timeout)
            except gexc.NotFound:
                return []
            found = []
            for split in current_split(current):
                if split.percent <= 0 and not split.tag:
                    continue
                revision = self.clients["revisions"].get_revision(name=f"{name}/revisions/{split.revision}",
                                                                  retry=None, timeout=self.caller.timeout)
                containers = list(revision.containers or [])
                created = revision.create_time.timestamp() if revision.create_time else None
                found.append(ServingRevision(split.revision, split.percent, split.tag,
                                             containers[0].image if containers else "",
                                             revision.labels.get("version", ""), revision.labels.get("commit", ""),
                                             created))
            return found

        return self.caller.call(f"reading what {service} serves", read)
