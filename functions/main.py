"""Cloud Functions entry points. Thin on purpose: parse, call one service, map errors.

Ack or retry is decided at this edge, for every Pub/Sub-triggered function that reads a
message, by the one table in ``shared/app/edge.py`` (``ACK_OR_RETRY``): malformed input is
kept as a dead letter and acknowledged; transient errors and settings the operator must fix
raise, so Pub/Sub redelivers them. ``sweep`` reads nothing from its tick and is deployed
without retries: a failed sweep is logged and the next minute's tick is its retry.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import functions_framework

# On GCP the deployed source holds functions/ and shared/ side by side at its root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared import bootstrap  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("functions")


def _json(body: dict, status: int):
    return json.dumps(body), status, {"Content-Type": "application/json"}


@functions_framework.http
def on_push(request):
    """GitHub push webhook -> release created once -> `release.started`."""
    status, body = bootstrap.push_service().handle(request.headers, request.get_data())
    return _json(body, status)


@functions_framework.cloud_event
def dispatch(cloud_event):
    """Pub/Sub push from `pipeline-events` and `cloud-builds`."""
    from shared.app import edge

    edge.deliver(str(cloud_event["id"]), cloud_event.data,
                 lambda *message: bootstrap.dispatcher().handle_message(*message), bootstrap.dead_letters, "dispatch")


@functions_framework.cloud_event
def drain_dead_letters(cloud_event):
    """Pub/Sub push from `pipeline-dead-letter`: what Pub/Sub gave up on joins the one dead-letter store."""
    from shared.app import edge

    edge.deliver(str(cloud_event["id"]), cloud_event.data,
                 lambda *message: bootstrap.dead_letters().drain(*message), bootstrap.dead_letters, "drain")


@functions_framework.http
def probe(request):
    """Cloud Tasks: one scheduled probe of a running stage (poll once, or one round of a check)."""
    from shared.domain.errors import MalformedEvent
    from shared.domain.probes import PROBE_SIGNATURE_HEADER, decode_task

    body = request.get_data()
    try:
        task = decode_task(body, request.headers.get(PROBE_SIGNATURE_HEADER, ""), bootstrap.link_keyring())
    except MalformedEvent as exc:
        # Acknowledged (2xx), so Cloud Tasks does not retry what can never succeed.
        task_name = request.headers.get("X-CloudTasks-TaskName", "unnamed")
        bootstrap.dead_letters().keep(f"probe-{task_name}", str(exc), "probe", body)
        return _json({"status": "refused", "reason": str(exc)}, 200)
    # A transient failure raises: the 500 makes Cloud Tasks retry the probe with backoff.
    return _json({"status": "ok", "done": bootstrap.probe_service().handle(task)}, 200)


@functions_framework.http
def operator(request):
    """Operator actions (replay, chaos, …) for callers with a verified Google ID token on the list."""
    status, body = bootstrap.operator().handle(request.method, request.headers, request.get_data())
    return _json(body, status)


@functions_framework.http
def on_approval(request):
    """Signed approval links: GET/HEAD show a confirm page, POST decides."""
    answer = bootstrap.approval_pages().handle(request.method, request.args, request.form, request.headers)
    return answer.html, answer.status, answer.headers


@functions_framework.cloud_event
def sweep(cloud_event):
    """One-minute tick from Cloud Scheduler via `pipeline-tick`: poll running stages, enforce deadlines."""
    log.info("sweep: %s", bootstrap.sweeper()())


@functions_framework.http
def dashboard(request):
    """Release list and one release as its pipeline of stages; refreshes while it runs."""
    status, body, headers = bootstrap.dashboard()(request.method, request.path, request.args)
    return body, status, headers
