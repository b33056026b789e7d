"""Stages of kind ``check``: HTTP GETs against a deployed service, finished at once.

The base URL comes from Cloud Run itself: the service URL for ``staging``/``prod``,
the URL of the traffic tag (``canary``) for ``canary``, so the prod smoke talks to
the new revision only. Each path is retried inside the stage's window because a
fresh revision may need a moment; the stage passes only if every path answered 2xx.
With ``params.bake`` (a duration) the paths are then checked again every second
until the bake time is over, and one failure fails the stage: the canary has to
stay healthy while it takes its share of traffic, not just answer once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import requests

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.domain.events import Outcome
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.run_services import DEFAULT_CANARY_TAG, service_path
from shared.adapters.executors.substitute import substitute, variables_for
from shared.domain.pipeline import DEFAULT_CHECK_WINDOW_S, Pipeline, Stage, parse_duration
from shared.app.ports import StageFinish, StartResult
from shared.domain.state import StageState



@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 5.0
    multiplier: float = 2.0
    request_timeout_s: float = 10.0


def check_paths(
    base_url: str, paths: list[str], window_s: float, *, session: Any = None, backoff: Backoff | None = None,
    monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """GET every path until it answers 2xx or the window closes; one record per path.

    The window is shared by all paths (it bounds the whole stage), but each path gets
    at least one attempt. Latency is the last attempt's, in ms, measured by requests.
    """
    http = session or requests.Session()
    backoff = backoff or Backoff()
    deadline = monotonic() + window_s
    checks = []
    for path in paths:
        url = base_url.rstrip("/") + "/" + str(path).lstrip("/")
        record: dict[str, Any] = {"path": path, "status": None, "attempts": 0, "latency_ms": None}
        delay = backoff.initial_s
        while True:
            record["attempts"] += 1
            remaining = deadline - monotonic()
            try:
                response = http.get(url, timeout=max(0.5, min(backoff.request_timeout_s, remaining)),
                                    allow_redirects=True)
                record.update(status=response.status_code, latency_ms=round(response.elapsed.total_seconds() * 1000, 1))
                record.pop("error", None)
                if 200 <= response.status_code < 300:
                    break
            except requests.RequestException as exc:
                record.update(status=None, latency_ms=None, error=type(exc).__name__)
            remaining = deadline - monotonic()
            if remaining <= 0:
                break
            sleep(min(delay, remaining))
            delay = min(delay * backoff.multiplier, backoff.maximum_s)
        checks.append(record)
    return checks


def bake(
    base_url: str, paths: list[str], bake_s: float, *, session: Any = None, interval_s: float = 1.0,
    monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    request_timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Check every path once per interval until ``bake_s`` is over; stop at the first failure."""
    http = session or requests.Session()
    end = monotonic() + bake_s
    rounds = 0
    while monotonic() < end:
        rounds += 1
        for path in paths:
            url = base_url.rstrip("/") + "/" + str(path).lstrip("/")
            try:
                status = http.get(url, timeout=request_timeout_s).status_code
            except requests.RequestException as exc:
                return {"bake_s": bake_s, "rounds": rounds, "failed": f"GET {path} failed ({type(exc).__name__})"}
            if not 200 <= status < 300:
                return {"bake_s": bake_s, "rounds": rounds, "failed": f"GET {path} answered {status}"}
        sleep(max(0.0, min(interval_s, end - monotonic())))
    return {"bake_s": bake_s, "rounds": rounds, "failed": ""}


def verdict(checks: list[dict[str, Any]]) -> tuple[Outcome, str]:
    bad = [c for c in checks if not (isinstance(c["status"], int) and 200 <= c["status"] < 300)]
    if not bad:
        return Outcome.SUCCEEDED, ""
    parts = [
        f"GET {c['path']} " + (f"answered {c['status']}" if c["status"] is not None else f"failed ({c.get('error')})")
        + f" after {c['attempts']} attempt(s)"
        for c in bad
    ]
    return Outcome.FAILED, "; ".join(parts)


class HttpCheckExecutor:
    def __init__(self, settings: Settings, services: Any, caller: ApiCaller | None = None, *,
                 session: Any = None, backoff: Backoff | None = None,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.services = services
        self.caller = caller or ApiCaller()
        self.session = session
        self.backoff = backoff or Backoff()
        self.monotonic = monotonic
        self.sleep = sleep

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        params = substitute(stage.params, variables_for(self.settings, pipeline, command))
        base_url = self.caller.call(
            f"finding the URL to check for {params.get('target')}", lambda: self.base_url(params),
            release_id=command.release_id, stage=stage.id,
        )
        window = parse_duration(params.get("window", DEFAULT_CHECK_WINDOW_S), stage.label)
        checks = check_paths(base_url, list(params["paths"]), window, session=self.session, backoff=self.backoff,
                             monotonic=self.monotonic, sleep=self.sleep)
        outcome, reason = verdict(checks)
        result = {"url": base_url, "target": params["target"], "checks": checks}
        if outcome is Outcome.SUCCEEDED and params.get("bake"):
            baked = bake(base_url, list(params["paths"]), parse_duration(params["bake"], stage.label),
                         session=self.session, monotonic=self.monotonic, sleep=self.sleep,
                         request_timeout_s=self.backoff.request_timeout_s)
            result["bake"] = baked
            if baked["failed"]:
                outcome, reason = Outcome.FAILED, f"{baked['failed']} during the {baked['bake_s']:.0f}s bake"
        return StartResult(handle={"url": base_url}, finished=StageFinish(outcome, reason, result))

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        return None  # a check finishes inside start(); nothing runs afterwards

    def base_url(self, params: Mapping[str, Any]) -> str:
        if params.get("url"):  # an explicit URL wins (checks of something not on Cloud Run)
            return str(params["url"])
        target = params.get("target")
        if not params.get("service"):
            raise ExecutorError(f"a check of target {target!r} needs params.service (or params.url)")
        service = self.services.get_service(name=service_path(self.settings, str(params["service"])),
                                            retry=None, timeout=self.caller.timeout)
        if target == "canary":
            tag = str(params.get("revision_tag") or DEFAULT_CANARY_TAG)
            uri = next((s.uri for s in service.traffic_statuses if s.tag == tag and s.uri), "")
            if not uri:
                raise ExecutorError(f"service {params['service']} has no traffic tag {tag!r} with a URL")
            return uri
        if target in ("staging", "prod"):
            if not service.uri:
                raise ExecutorError(f"service {params['service']} has no URL yet")
            return service.uri
        raise ExecutorError(f"unknown check target {target!r} (staging, prod or canary)")
