"""Cloud Build status notifications on the Pub/Sub emulator, in the real format.

Real Cloud Build publishes every status change of a build on topic ``cloud-builds``:
attributes ``buildId`` and ``status``, data = the Build resource as proto3 JSON
(camelCase, enums as names, unset fields left out). One worker thread publishes
in order, so subscribers see QUEUED before WORKING before the final status unless
a test re-publishes on purpose.
"""
from __future__ import annotations

import logging
import queue
import threading

from google.cloud.devtools.cloudbuild_v1.types import Build

log = logging.getLogger(__name__)


def build_notification(build: Build) -> tuple[bytes, dict[str, str]]:
    data = Build.to_json(
        build, use_integers_for_enums=False, always_print_fields_with_no_presence=False, indent=None
    ).encode("utf-8")
    return data, {"buildId": build.id, "status": build.status.name}


class BuildNotifier:
    def __init__(self, emulator_host: str | None, project: str, topic: str) -> None:
        self._host = emulator_host
        self._topic = f"projects/{project}/topics/{topic}"
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._publisher = None
        self.published = 0

    def start(self) -> None:
        if not self._host:
            return
        import grpc
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        transport = PublisherGrpcTransport(channel=grpc.insecure_channel(self._host))
        # One message per batch, as the real service sends them: no 10 ms batching delay.
        self._publisher = pubsub_v1.PublisherClient(
            transport=transport, batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        try:
            self._publisher.create_topic(name=self._topic)
        except AlreadyExists:
            pass
        self._thread = threading.Thread(target=self._run, name="standin-notifier", daemon=True)
        self._thread.start()

    def publish(self, build: Build) -> None:
        if self._publisher is not None:
            self._queue.put(build_notification(build))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, attributes = item
            if data == "__flush__":
                attributes.set()
                continue
            try:
                self._publisher.publish(self._topic, data, **attributes).result(timeout=30)
                self.published += 1
            except Exception:  # the emulator went away: a lost notification, like the real thing
                log.exception("stand-in could not publish build notification %s", attributes)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Block until every queued notification has been handed to the emulator."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put_nowait(("__flush__", done))
        done.wait(timeout_s)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None
