"""The push trigger's answer time: GitHub gives a webhook 10 s.

`on_push` through the functions-framework test client over the emulators: verify
the signature, create the release (create-only write), publish `release.started`.
The first request includes the function's wiring (clients, pipeline file).
"""
from __future__ import annotations

import json
import os
import time

from bench.common import PROJECT, Report, emulators, ensure_topics, new_commit, prefix, quiet, summary_ms

SECRET = "bench-webhook-secret-not-a-secret"
PUSHES = 40


def run(hosts: dict | None = None, quick: bool = False) -> Report:
    """``quick``: 5 pushes instead of PUSHES."""
    pushes = 5 if quick else PUSHES
    from functions_framework import create_app

    from shared import bootstrap
    from shared.app.push import signature_for

    quiet()
    report = Report()
    with emulators(hosts):
        events = prefix("push") + "events"
        ensure_topics(PROJECT, events)
        saved = {k: os.environ.get(k) for k in ("RELEASE_WEBHOOK_SECRET", "RELEASE_EVENTS_TOPIC",
                                                 "RELEASE_COLLECTION_PREFIX", "RELEASE_PROJECT")}
        os.environ.update({"RELEASE_WEBHOOK_SECRET": SECRET, "RELEASE_EVENTS_TOPIC": events,
                           "RELEASE_COLLECTION_PREFIX": prefix("push"), "RELEASE_PROJECT": PROJECT})
        bootstrap.reset()
        try:
            client = create_app("on_push", "functions/main.py").test_client()
            times, statuses = [], []
            for i in range(pushes):
                body = json.dumps({
                    "ref": "refs/heads/main", "after": new_commit(), "repository": {"full_name": "acme/noesis2"},
                    "pusher": {"email": "dev@example.com"},
                    "head_commit": {"message": f"change\n\nRelease-Version: 1.{i}.0"}}).encode()
                headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": f"d{i}",
                           "X-Hub-Signature-256": signature_for(SECRET, body)}
                t0 = time.perf_counter()
                statuses.append(client.post("/", data=body, headers=headers).status_code)
                times.append(time.perf_counter() - t0)
        finally:
            bootstrap.reset()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    warm = summary_ms(times[1:])
    report.add("7 push", "first push (incl. wiring)", f"{times[0] * 1000:.0f} ms", "<= 10 s", times[0] < 10)
    report.add("7 push", f"next {pushes - 1} pushes p50 / p99", f"{warm['p50']:.1f} / {warm['p99']:.1f} ms",
               "<= 10 s", warm["p99"] < 10_000)
    report.add("7 push", "answers", f"{statuses.count(201)} x 201 of {pushes} ({sorted(set(statuses))})", f"{pushes} x 201",
               statuses.count(201) == pushes)
    return report


if __name__ == "__main__":
    from bench.common import print_report

    print_report("push trigger answer time", run().rows)
