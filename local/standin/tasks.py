"""google.cloud.tasks.v2.CloudTasks: queues and HTTP tasks, dispatched at their schedule time.

Enough for the probes of running stages (shared/adapters/cloud_tasks.py): CreateQueue,
GetQueue, CreateTask, GetTask, DeleteTask. A task is POSTed to its URL at its
schedule_time (plus ``dispatch_delay_s``, the benchmark's stand-in for GCP's dispatch
latency); a non-2xx answer or no answer is retried with the queue's default backoff.
Rules enforced, each as the API documents it:
- CreateTask on a queue that does not exist: "The queue must already exist."
  (https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks/create);
  the service answers FAILED_PRECONDITION "Queue does not exist." (as clients report it, e.g.
  stackkit/laravel-google-cloud-tasks-queue#103), and for a queue deleted recently FAILED_PRECONDITION
  "The queue no longer exists, though a queue with this name existed recently."
  (GoogleCloudPlatform/python-docs-samples#4034). A paused queue still takes tasks (Queue.State
  PAUSED: "more tasks can still be added to it by the user"), so pausing is no error here.
- A task id already used by a task that exists or ran in the last hour is ALREADY_EXISTS
  ("another task with the same name can't be created for ~1hour after the original task
  was deleted or executed"): CreateTaskRequest, same page.
- Task names are projects/P/locations/L/queues/Q/tasks/TASK_ID with TASK_ID of letters,
  digits, '-' and '_', at most 500 characters; queue ids letters, digits, '-', at most
  100 (INVALID_ARGUMENT): https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks
- "The maximum task size is 100KB" (INVALID_ARGUMENT): the create page above.
- An HTTP target's url must begin with http:// or https:// (INVALID_ARGUMENT):
  https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks#HttpRequest
- schedule_time unset or in the past means now (CreateTaskRequest).
- 2xx acknowledges a task; anything else is retried with backoff from min_backoff 0.1 s,
  doubling (queue.yaml defaults): https://cloud.google.com/tasks/docs/configuring-queues#retry
- A task with an ``oidc_token`` is delivered with ``Authorization: Bearer <ID token>`` of that
  service account, audience the token's ``audience`` or else the task's URL ("If not specified,
  the URI specified in target will be used": OidcToken.audience). The token comes from the local
  token issuer (``id_token_url``); Cloud Run's invoker check in front of the function verifies it.
Not done here: only loopback URLs are delivered to (this machine's rule), refused with INVALID_ARGUMENT.
"""
from __future__ import annotations

import heapq
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import grpc
from google.cloud import tasks_v2
from google.protobuf import empty_pb2

from local.standin.common import ApiError, clone

SERVICE = "google.cloud.tasks.v2.CloudTasks"
QUEUE_NAME = re.compile(r"^projects/[A-Za-z0-9:.-]+/locations/[A-Za-z0-9-]+/queues/[A-Za-z0-9-]{1,100}$")
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
MAX_TASK_BYTES = 100 * 1024
TOMBSTONE_S = 3600.0
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 60.0  # the real default is 3600 s; a local run never waits that long
MAX_ATTEMPTS = 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(order=True)
class _Due:
    at: float
    name: str = field(compare=False)


class CloudTasksService:
    def __init__(self, dispatch_delay_s: float = 0.0, workers: int = 16, id_token_url: str = "") -> None:
        self.dispatch_delay_s = dispatch_delay_s
        self.id_token_url = id_token_url
        self._queues: dict[str, tasks_v2.Queue] = {}
        self._tasks: dict[str, tasks_v2.Task] = {}
        self._used: dict[str, float] = {}  # task name -> when it ran or was deleted (monotonic)
        self._deleted: set[str] = set()  # queues deleted (tests: remove_queue)
        self._due: list[_Due] = []
        self._lock = threading.Condition()
        self._pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="standin-task")
        self._stopped = False
        self.dispatched: list[dict[str, Any]] = []  # {name, scheduled, dispatched, status}, for tests and benches
        self._thread = threading.Thread(target=self._run, daemon=True, name="standin-tasks")
        self._thread.start()

    def register(self, registry) -> None:
        registry.add(SERVICE, "CreateQueue", self.create_queue, tasks_v2.CreateQueueRequest, tasks_v2.Queue)
        registry.add(SERVICE, "GetQueue", self.get_queue, tasks_v2.GetQueueRequest, tasks_v2.Queue)
        registry.add(SERVICE, "CreateTask", self.create_task, tasks_v2.CreateTaskRequest, tasks_v2.Task)
        registry.add(SERVICE, "GetTask", self.get_task, tasks_v2.GetTaskRequest, tasks_v2.Task)
        registry.add(SERVICE, "DeleteTask", self.delete_task, tasks_v2.DeleteTaskRequest, empty_pb2.Empty)

    # -- queues ---------------------------------------------------------------------------
    def add_queue(self, name: str, queue: tasks_v2.Queue | None = None) -> None:
        """A queue that exists, with the retry and rate settings it was created with (kept, shown by GetQueue)."""
        stored = clone(queue) if queue is not None else tasks_v2.Queue()
        stored.name, stored.state = name, tasks_v2.Queue.State.RUNNING
        with self._lock:
            self._queues.setdefault(name, stored)

    def create_queue(self, request: tasks_v2.CreateQueueRequest) -> tasks_v2.Queue:
        name = request.queue.name
        if not QUEUE_NAME.match(name) or not name.startswith(request.parent + "/queues/"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid queue name {name!r}")
        with self._lock:
            if name in self._queues:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"queue {name} already exists")
        self.add_queue(name, request.queue)
        return self.get_queue(tasks_v2.GetQueueRequest(name=name))

    def remove_queue(self, name: str) -> None:
        """The queue is deleted (as by `gcloud tasks queues delete`); its name stays taken a while."""
        with self._lock:
            self._queues.pop(name, None)
            self._deleted.add(name)

    def get_queue(self, request: tasks_v2.GetQueueRequest) -> tasks_v2.Queue:
        with self._lock:
            queue = self._queues.get(request.name)
            if queue is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"queue {request.name} not found")
            return clone(queue)

    # -- tasks ----------------------------------------------------------------------------
    def create_task(self, request: tasks_v2.CreateTaskRequest) -> tasks_v2.Task:
        task = clone(request.task)
        if tasks_v2.Task.serialize(task).__len__() > MAX_TASK_BYTES:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "Task size too large: the maximum task size is 100KB")
        if not task.http_request.url:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "stand-in: only HTTP target tasks (http_request.url)")
        url = urlparse(task.http_request.url)
        if url.scheme not in ("http", "https"):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "HttpRequest.url must begin with http:// or https://")
        if url.hostname not in LOOPBACK:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "stand-in: tasks are delivered to loopback URLs only")
        with self._lock:
            if request.parent not in self._queues:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                               "The queue no longer exists, though a queue with this name existed recently."
                               if request.parent in self._deleted else "Queue does not exist.")
            if task.name:
                prefix = request.parent + "/tasks/"
                if not task.name.startswith(prefix) or not TASK_ID.match(task.name[len(prefix):]):
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid task name {task.name!r}")
                used = self._used.get(task.name)
                if task.name in self._tasks or (used is not None and time.monotonic() - used < TOMBSTONE_S):
                    raise ApiError(grpc.StatusCode.ALREADY_EXISTS, f"Requested entity already exists: {task.name}")
            else:
                task.name = f"{request.parent}/tasks/{threading.get_ident()}{time.monotonic_ns()}"
            now = datetime.now(timezone.utc)
            if not task.schedule_time or task.schedule_time < now:
                task.schedule_time = now
            task.create_time = now
            task.dispatch_count = 0
            self._tasks[task.name] = task
            at = task.schedule_time.timestamp() + self.dispatch_delay_s
            heapq.heappush(self._due, _Due(at, task.name))
            self._lock.notify()
            return clone(task)

    def get_task(self, request: tasks_v2.GetTaskRequest) -> tasks_v2.Task:
        with self._lock:
            task = self._tasks.get(request.name)
            if task is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"task {request.name} not found")
            return clone(task)

    def delete_task(self, request: tasks_v2.DeleteTaskRequest) -> empty_pb2.Empty:
        with self._lock:
            if self._tasks.pop(request.name, None) is None:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"task {request.name} not found")
            self._used[request.name] = time.monotonic()
        return empty_pb2.Empty()

    # -- dispatch -------------------------------------------------------------------------
    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._due or self._due[0].at > time.time()):
                    self._lock.wait(None if not self._due else max(0.0, self._due[0].at - time.time()))
                if self._stopped:
                    return
                due = heapq.heappop(self._due)
                task = self._tasks.get(due.name)
            if task is not None:
                self._pool.submit(self._dispatch, task.name, due.at)

    def _id_token(self, email: str, audience: str) -> str:
        """An ID token of ``email`` for ``audience`` from the token issuer ('' when it does not answer)."""
        import json

        ask = urllib.request.Request(self.id_token_url, data=json.dumps({"email": email, "audience": audience}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(ask, timeout=10) as answer:
                return json.loads(answer.read())["id_token"]
        except (OSError, ValueError, KeyError):
            return ""

    def _dispatch(self, name: str, due_at: float) -> None:
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                return
            task.dispatch_count += 1
            attempt = task.dispatch_count
            http = task.http_request
            queue = name.split("/tasks/")[0].rsplit("/", 1)[-1]
            headers = {**dict(http.headers), "X-CloudTasks-QueueName": queue,
                       "X-CloudTasks-TaskName": name.rsplit("/", 1)[-1],
                       "X-CloudTasks-TaskRetryCount": str(attempt - 1)}
            method = tasks_v2.HttpMethod(http.http_method).name if http.http_method else "POST"
            oidc = (http.oidc_token.service_account_email, http.oidc_token.audience or http.url)
            url, body = http.url, http.body or None
        if oidc[0] and self.id_token_url:
            headers["Authorization"] = f"Bearer {self._id_token(*oidc)}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError):
            status = 0
        with self._lock:
            self.dispatched.append({"name": name, "scheduled": task.schedule_time.timestamp(),
                                    "dispatched": started, "status": status, "attempt": attempt})
            if 200 <= status < 300 or attempt >= MAX_ATTEMPTS:
                self._tasks.pop(name, None)
                self._used[name] = time.monotonic()
                return
            backoff = min(MIN_BACKOFF_S * 2 ** (attempt - 1), MAX_BACKOFF_S)
            heapq.heappush(self._due, _Due(time.time() + backoff, name))
            self._lock.notify()
