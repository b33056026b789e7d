"""How long a canary verdict takes, and how many API calls each interval costs.

Two revisions of the sample app run behind the stand-in's routers with steady traffic
(stable 3 : canary 1, as a 10 % split sees more stable traffic); every ``interval`` of an
8 minute bake the analysis hook measures through the real Monitoring and Logging clients
and diagnoses, as the probes of a bake do; the first failing interval ends the bake. Cloud Run's metric timing (60 s samples, readable up to
180 s later) is scaled by ``--scale`` (default 0.1, so a run takes about a minute),
together with the analysis interval; the times printed are the measured ones divided
by the scale, i.e. what GCP would take, and the scale is printed beside them.
``--scale 1`` runs at Google's figures (several minutes per scenario).

    python -m bench.canary_analysis [--scale 0.1]
"""
from __future__ import annotations

import argparse
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

from bench.common import Report, Row, log_dir, print_report

SCENARIOS = (("5 % 5xx canary", "5xx=0.05", "fail"), ("error-logging canary", "error_logs=0.05", "fail"),
             ("clean canary", "", "pass"))
GCP_SAMPLE_S, GCP_DELAY_S, GCP_INTERVAL_S, LOG_DELAY_S = 60.0, 180.0, 60.0, 2.0
BAKE_S = 480.0  # pipelines/noesis2.yaml's prod bake
QUICK_SCALE = 0.03  # --quick: about 15 s per scenario; verdicts at this scale are rough


def _send(url: str) -> None:
    try:
        with urllib.request.urlopen(url + "/", timeout=10):
            pass
    except (urllib.error.HTTPError, OSError):
        pass


def _load(urls: list[str], stop: threading.Event, pause_s: float) -> None:
    while not stop.is_set():
        for url in urls:
            _send(url)
        stop.wait(pause_s)


def _deploy(settings, name: str, faults: str) -> dict[str, str]:
    from google.cloud import run_v2

    from shared.adapters import gcp_clients

    parent = f"projects/{settings.project}/locations/{settings.region}"

    def template(revision: str, env_faults: str) -> run_v2.RevisionTemplate:
        env = [run_v2.EnvVar(name="WORK_MS", value="20"), run_v2.EnvVar(name="CANARY_FAULTS", value=env_faults)]
        return run_v2.RevisionTemplate(revision=revision, containers=[run_v2.Container(image="local", env=env)])

    services = gcp_clients.run_services(settings)
    stable, canary = f"{name}-00001-stb", f"{name}-00002-cny"
    service = services.create_service(parent=parent, service=run_v2.Service(template=template(stable, "")),
                                      service_id=name).result(timeout=30)
    service.template = template(canary, faults)
    kind = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    service.traffic = [run_v2.TrafficTarget(type_=kind, revision=stable, percent=90, tag="stable"),
                       run_v2.TrafficTarget(type_=kind, revision=canary, percent=10, tag="canary")]
    urls = {s.tag: s.uri for s in services.update_service(service=service).result(timeout=30).traffic_statuses}
    return {"stable": stable, "canary": canary, "stable_url": urls["stable"], "canary_url": urls["canary"]}


def run(hosts: dict[str, str] | None = None, quick: bool = False, scale: float = 0.1) -> Report:
    if quick:
        scale = min(scale, QUICK_SCALE)
    from local.standin.server import StandIn, StandInConfig
    from shared.adapters import gcp_clients
    from shared.adapters.telemetry import CloudTelemetry
    from shared.app.canary_analysis import TelemetryAnalysis
    from shared.app.config import REPO_ROOT, Settings
    from shared.domain.probes import ProbeInterval

    report = Report()
    interval_s = GCP_INTERVAL_S * scale
    cfg = StandInConfig(project="bench-project", workspace=REPO_ROOT, log_dir=log_dir("canary-analysis"),
                        metric_sample_s=GCP_SAMPLE_S * scale, metric_delay_s=GCP_DELAY_S * scale,
                        log_delay_s=LOG_DELAY_S)
    with StandIn(cfg) as standin:
        settings = Settings(project=cfg.project, region=cfg.region, cloud_run_endpoint=standin.endpoint,
                            logging_endpoint=standin.endpoint, monitoring_endpoint=standin.endpoint)
        analyse = TelemetryAnalysis(CloudTelemetry(cfg.project, gcp_clients.monitoring_metrics(settings),
                                                   gcp_clients.logging_entries(settings)))
        criteria = {"window": f"{max(int(300 * scale), 1)}s", "interval": f"{max(int(interval_s), 1)}s",
                    "min_requests": 50}
        calls_per_interval = []
        for index, (title, faults, expected) in enumerate(SCENARIOS):
            rig = _deploy(settings, f"bench{index}", faults)
            target = {"service": f"bench{index}", "canary_revision": rig["canary"], "stable_revision": rig["stable"]}
            stop = threading.Event()
            load = threading.Thread(target=_load, args=([rig["stable_url"]] * 3 + [rig["canary_url"]], stop, 0.05),
                                    daemon=True)
            started = time.time()
            load.start()
            verdicts: list[tuple[float, str]] = []  # (seconds since the canary took traffic, verdict)
            last = None
            try:
                # One analysis per interval through the whole bake, as the probes do; the first
                # failing interval ends it.
                while time.time() - started < BAKE_S * scale:
                    time.sleep(interval_s)
                    before = standin.monitoring.calls + standin.logging.calls
                    interval = ProbeInterval("bench", "prod-smoke", "bench.a1", rig["canary_url"], "bake",
                                             time.time() - interval_s, time.time())
                    last = analyse({"analysis": {"criteria": criteria, "target": target}}, interval)
                    calls_per_interval.append(standin.monitoring.calls + standin.logging.calls - before)
                    verdicts.append((time.time() - started, last.verdict.value))
                    if last.verdict.value == "fail":
                        break
            finally:
                stop.set()
                load.join(10)
            conclusive = next(((t, v) for t, v in verdicts if v != "inconclusive"), None)
            outcome = "fail" if verdicts and verdicts[-1][1] == "fail" else (
                "pass" if any(v == "pass" for _, v in verdicts) else "inconclusive")
            ended = verdicts[-1][0] if verdicts else 0.0
            first = f"first conclusive: {conclusive[1]} after {conclusive[0] / scale:.0f} s; " if conclusive else ""
            report.add("canary analysis", f"{title}: verdict of an {BAKE_S / 60:.0f} min bake",
                       f"{outcome} after {ended / scale:.0f} s on GCP timing ({len(verdicts)} intervals)",
                       expected, met=(outcome == expected),
                       note=f"{first}measured {ended:.1f} s at scale {scale:g} (samples {cfg.metric_sample_s:g} s, "
                            f"delay {cfg.metric_delay_s:g} s, interval {interval_s:g} s); "
                            f"{last.evidence[:160] if last else ''}")
        report.add("canary analysis", "API calls per interval (stable beside the canary)",
                   f"{min(calls_per_interval)}–{max(calls_per_interval)}", "",
                   note="ListTimeSeries x2 (count, latencies), ListLogEntries x3 (canary error logs, "
                        "request logs of canary and stable); staging without a stable revision: 4")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.canary_analysis", description=__doc__)
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of Cloud Run's metric timing to run at")
    args = parser.parse_args()
    print(f"started {datetime.now(timezone.utc):%H:%M:%S} UTC")
    print_report("Canary analysis: verdict time and API calls", run(scale=args.scale).rows)


if __name__ == "__main__":
    main()


__all__ = ["Row", "run"]
