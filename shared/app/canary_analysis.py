"""The analysis each probe interval of a check calls: telemetry in, a verdict with its evidence out.

The probe mechanism (shared/app/probing.py, rules in shared/domain/probes.py) calls this once per
closed interval. It measures the window of ``criteria.window_s`` that ends with the interval
through the ``Telemetry`` port (Cloud Monitoring and Cloud Logging), and lets the pure
``diagnose`` judge. A telemetry API that fails is INCONCLUSIVE with the error as evidence: the
bake is extended and, if it stays so, fails closed; it is never a silent pass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from shared.app.ports import Telemetry
from shared.domain.analysis import AnalysisTarget, Criteria, diagnose
from shared.domain.probes import IntervalVerdict, ProbeInterval, ProbeVerdict, no_analysis

log = logging.getLogger(__name__)


@dataclass
class TelemetryAnalysis:
    telemetry: Telemetry | None = None
    # Or made on first use: the Monitoring and Logging clients cost about a second of imports,
    # which a probe that polls a job, or a check without analysis, should not pay at cold start.
    make_telemetry: Callable[[], Telemetry] | None = None

    def _telemetry(self) -> Telemetry:
        if self.telemetry is None:
            assert self.make_telemetry is not None, "TelemetryAnalysis needs telemetry or make_telemetry"
            self.telemetry = self.make_telemetry()
        return self.telemetry

    def __call__(self, check: Mapping[str, Any], interval: ProbeInterval) -> IntervalVerdict:
        spec = check.get("analysis") or {}
        if not spec.get("target"):
            return no_analysis(check, interval)
        criteria = Criteria.from_params(spec.get("criteria"))
        target = AnalysisTarget(**spec["target"])
        end = datetime.fromtimestamp(interval.end, tz=timezone.utc)
        start = end - timedelta(seconds=criteria.window_s)
        try:
            measurements = self._telemetry().measure(criteria, target, start, end)
        except Exception as exc:  # noqa: BLE001 - any client error: not judged, said so, and retried next interval
            log.warning("telemetry of %s for %s: %s", target.canary_revision, interval.stage_run_id, exc)
            return IntervalVerdict(ProbeVerdict.INCONCLUSIVE, f"telemetry unavailable: {type(exc).__name__}: {exc}"[:300])
        verdict = diagnose(criteria, measurements)
        # The reason travels into the stage's failure reason and the failure notice: with its window.
        told = f"{verdict.reason} [window {measurements.window_start} to {measurements.window_end}]"
        return IntervalVerdict(verdict.outcome, told, verdict.to_dict())
