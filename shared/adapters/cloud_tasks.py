"""ProbeScheduler over Cloud Tasks: one HTTP task per probe, delivered at its schedule time.

Why Cloud Tasks: it is GCP's service for "call this URL at that time", with per-task
schedule times (Cloud Scheduler's finest grain is one minute), de-duplication by task
id (a repeated start or a redelivered probe schedules nothing twice: ALREADY_EXISTS),
retries with backoff when the probe answers non-2xx, and OIDC tokens so the probe
function stays private. The body is signed as well (shared/domain/probes.py).

Errors go through the executors' one mapping (``ApiCaller``), each Cloud Tasks answer named here:
- UNAVAILABLE and DEADLINE_EXCEEDED are retried briefly, then TransientError (redelivered later);
- RESOURCE_EXHAUSTED (a quota or the queue's task-creation rate) is a TransientError at once: the
  event or the probe is redelivered with backoff, by when the quota has room again;
- FAILED_PRECONDITION (the queue does not exist, or was deleted recently) and NOT_FOUND are a
  ConfigError: the deployment is wrong and every stage would meet it, so nothing is failed for it
  (redelivered, logged as ERROR, until the operator re-creates the queue with deploy/);
- PERMISSION_DENIED (naming the permission) and INVALID_ARGUMENT are an ExecutorError, so the stage
  the probe would follow fails with that reason.
A paused queue takes tasks and holds them (Queue.State PAUSED); the stage's timeout ends such a stage.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from google.api_core import exceptions as gexc

from shared.app.config import Settings
from shared.domain.approval_tokens import Keyring
from shared.domain.errors import ConfigError, TransientError
from shared.domain.probes import PROBE_SIGNATURE_HEADER, ProbeTask, encode_task
from shared.adapters.gcp_clients import cloud_tasks
from shared.adapters.api_calls import ApiCaller, RetryPolicy

CALL_TIMEOUT_S = 10.0


class CloudTasksScheduler:
    def __init__(self, settings: Settings, client: Any = None, keyring: Keyring | None = None, caller: Any = None):
        self.settings = settings
        self._client = client
        self._keyring = keyring
        self._caller = caller  # an ApiCaller; made on first use

    @property
    def client(self) -> Any:
        if self._client is None:  # built on first use: most invocations schedule nothing
            self._client = cloud_tasks(self.settings)
        return self._client

    @property
    def queue(self) -> str:
        s = self.settings
        return f"projects/{s.project}/locations/{s.region}/queues/{s.probe_queue}"

    def schedule(self, task: ProbeTask, at: float) -> bool:
        from google.cloud import tasks_v2
        from google.protobuf import timestamp_pb2

        url = self.settings.require("probe_url")
        keyring = self._keyring or Keyring.from_setting(self.settings.approval_keys)
        body, signature = encode_task(task, keyring)
        http = tasks_v2.HttpRequest(
            url=url, http_method=tasks_v2.HttpMethod.POST, body=body,
            headers={"Content-Type": "application/json", PROBE_SIGNATURE_HEADER: signature})
        if self.settings.probe_service_account:
            http.oidc_token = tasks_v2.OidcToken(service_account_email=self.settings.probe_service_account,
                                                 audience=url)
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(dt.datetime.fromtimestamp(at, dt.timezone.utc))
        request = tasks_v2.Task(name=f"{self.queue}/tasks/{task.task_id}", http_request=http, schedule_time=when)

        def create() -> bool:
            try:
                self.client.create_task(parent=self.queue, task=request, timeout=CALL_TIMEOUT_S)
                return True
            except gexc.AlreadyExists:  # the same probe again (a redelivered start): scheduled once
                return False
            except (gexc.NotFound, gexc.FailedPrecondition) as exc:
                raise ConfigError(f"Cloud Tasks queue {self.queue} does not exist ({exc.message}); deploy/ creates "
                                  "it", release_id=task.release_id, stage=task.stage) from None
            except gexc.ResourceExhausted as exc:
                raise TransientError(f"Cloud Tasks refused probe {task.task_id} for now (RESOURCE_EXHAUSTED: "
                                     f"{exc.message}); retried with backoff", release_id=task.release_id,
                                     stage=task.stage) from None

        return self.caller.call(f"scheduling probe {task.task_id} in {self.queue}", create,
                                release_id=task.release_id, stage=task.stage)

    @property
    def caller(self) -> Any:
        if self._caller is None:
            self._caller = ApiCaller(RetryPolicy(call_timeout_s=CALL_TIMEOUT_S))
        return self._caller
