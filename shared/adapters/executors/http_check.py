"""Stages of kind ``check``: HTTP GETs against a deployed service, as scheduled probes.

The base URL comes from Cloud Run itself: the service URL for ``staging``/``prod``,
the URL of the traffic tag (``canary``) for ``canary``, so the prod smoke talks to
the new revision only. ``start`` only resolves it and returns the check as a handle
(url, paths, window, bake, probe interval); the GETs run later, one round per probe,
in the probe function (shared/app/probing.py, rules in shared/domain/probes.py), so no
function instance waits through a window or a bake.
"""
from __future__ import annotations

from typing import Any, Mapping

from shared.domain.commands import StartStage
from shared.app.config import Settings
from shared.domain.errors import ExecutorError
from shared.adapters.executors.calls import ApiCaller
from shared.adapters.executors.run_services import DEFAULT_CANARY_TAG, service_path
from shared.adapters.executors.substitute import substitute, variables_for
from shared.domain.analysis import AnalysisTarget, Criteria
from shared.domain.pipeline import DEFAULT_CHECK_WINDOW_S, Pipeline, Stage, parse_duration, thaw
from shared.domain.probes import DEFAULT_PROBE_INTERVAL_S
from shared.app.ports import StageFinish, StartResult
from shared.domain.state import StageState


class HttpCheckExecutor:
    def __init__(self, settings: Settings, services: Any, caller: ApiCaller | None = None):
        self.settings = settings
        self.services = services
        self.caller = caller or ApiCaller()

    def start(self, pipeline: Pipeline, stage: Stage, command: StartStage) -> StartResult:
        params = substitute(stage.params, variables_for(self.settings, pipeline, command))
        base_url = self.caller.call(
            f"finding the URL to check for {params.get('target')}", lambda: self.base_url(params),
            release_id=command.release_id, stage=stage.id,
        )
        handle = {
            "url": base_url, "target": params["target"], "paths": [str(p) for p in params["paths"]],
            "window_s": parse_duration(params.get("window", DEFAULT_CHECK_WINDOW_S), stage.label),
            "bake_s": parse_duration(params["bake"], stage.label) if params.get("bake") else 0,
            "interval_s": (parse_duration(params["probe_interval"], stage.label) if params.get("probe_interval")
                           else DEFAULT_PROBE_INTERVAL_S),
        }
        if params.get("auth") == "id_token":
            handle["audience"] = self.caller.call(
                f"finding the audience of {params.get('service') or base_url}", lambda: self.audience(params),
                release_id=command.release_id, stage=stage.id)
        if params.get("analysis"):
            criteria = Criteria.from_params(params["analysis"])
            target = self.caller.call(
                "finding the revisions the analysis judges", lambda: self.analysis_target(params),
                release_id=command.release_id, stage=stage.id,
            )
            handle["analysis"] = {"criteria": thaw(params["analysis"]), "target": target.to_dict()}
            handle["max_extension_s"] = criteria.max_extension_s
            if not params.get("probe_interval"):  # one analysis per checklist interval
                handle["interval_s"] = criteria.interval_s
        return StartResult(handle=handle)

    def analysis_target(self, params: Mapping[str, Any]) -> AnalysisTarget:
        """The revision under test and, for a canary, the stable revision serving the rest."""
        service = self.services.get_service(name=service_path(self.settings, str(params["service"])),
                                            retry=None, timeout=self.caller.timeout)
        latest = service.latest_ready_revision.rsplit("/", 1)[-1]
        serving = [(s.revision or latest, s.percent, s.tag) for s in service.traffic_statuses]
        if params.get("target") != "canary":
            return AnalysisTarget(str(params["service"]), latest, None)
        tag = str(params.get("revision_tag") or DEFAULT_CANARY_TAG)
        canary = next((revision for revision, _, t in serving if t == tag), "")
        if not canary:
            raise ExecutorError(f"service {params['service']} has no traffic tag {tag!r} to analyse")
        others = sorted(((percent, revision) for revision, percent, _ in serving if revision != canary and percent > 0),
                        reverse=True)
        return AnalysisTarget(str(params["service"]), canary, others[0][1] if others else None)

    def poll(self, pipeline: Pipeline, stage: Stage, state: StageState) -> StageFinish | None:
        return None  # the probes publish the verdict; there is nothing to poll

    def audience(self, params: Mapping[str, Any]) -> str:
        """What a private service's ID token names: ``audience``, else the URL checked (``url``), else the
        service's own URL (also for a canary's tag URL; name ``audience`` where the service expects another)."""
        if params.get("audience") or params.get("url"):
            return str(params.get("audience") or params["url"])
        service = self.services.get_service(name=service_path(self.settings, str(params["service"])),
                                            retry=None, timeout=self.caller.timeout)
        if not service.uri:
            raise ExecutorError(f"service {params['service']} has no URL yet")
        return service.uri

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
