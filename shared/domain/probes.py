"""Follow-ups of running stages as single scheduled probes: pure rules, no clock, no I/O.

Why probes and not a waiting function
-------------------------------------
Cloud Run jobs and service rollouts announce no completion, and an HTTP check with a
bake lasts minutes. Holding a function instance while they run costs function-seconds
and blocks the release's other events; waiting for the one-minute Cloud Scheduler tick
costs up to 60 s per stage. Instead, each running stage of a followed kind carries a
chain of single probes: one short call each (poll the execution or operation once, or
GET the checked paths once), scheduled at a time chosen here, carried as a Cloud Task
(``shared/adapters/cloud_tasks.py``). A probe that sees the end publishes
``stage.finished``; otherwise it schedules the next probe. The sweeper stays as the
safety net for a lost chain.

Everything a probe needs rides in the task (``ProbeTask``), so a probe reads no
Firestore document: the executor's handle (execution, revisions, URL), the stage-run
id, and for checks the progress of the window and the bake.

Checks
------
* Window: every path is GET until it answers 2xx or ``window`` ends (retries back off
  from 0.5 s to 5 s). A path that never answered 2xx fails the stage.
* Bake (``params.bake``): every ``probe_interval`` (default 5 s) all paths are GET
  once; one non-2xx fails the stage. Each probe closes an interval and calls the
  analysis (``IntervalAnalysis``: ``(check config, window) -> IntervalVerdict``).
* Verdict precedence: a failed GET during the window's end or the bake > an analysis
  FAIL (the first failing interval ends the bake at once) > the bake ran out with at
  least one PASS (or no analysis) = SUCCEEDED > every interval INCONCLUSIVE: the bake
  goes on, one interval at a time, up to ``max_extension_s`` (the checklist's
  ``max_extension``), then FAILED, naming the last evidence (fail closed).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Mapping

from shared.domain.approval_tokens import Keyring
from shared.domain.errors import MalformedEvent
from shared.domain.events import Outcome

# Kinds whose completion nobody announces (jobs, rollouts) or that take a while (checks).
FOLLOWED_KINDS = frozenset({"job", "deploy", "traffic", "check", "rollback"})
ROLLBACK_KIND = "rollback"  # a rollback by hand whose rollout runs on: polled like a traffic change
ROLLBACK_FOLLOW_S = 900  # how long its probes follow it
CHECK_KIND = "check"

FIRST_POLL_S = 1.0
POLL_MULTIPLIER = 1.5
# The largest gap between two polls bounds the detection delay: 3 s, plus Cloud Tasks'
# dispatch delay (0.5 s assumed), the poll RPC (0.2 s) and the Pub/Sub hop (0.1 s), is 3.8 s
# at worst, which leaves 1.2 s under the 5 s goal for a probe instance's cold start (0.3-0.4 s
# measured) on a loaded host (bench/gcp_clock.py measures it). A 5-minute job costs 100
# polls instead of 75 at 4 s: Cloud Tasks and function invocations of a few ms each.
MAX_POLL_GAP_S = 3.0
WINDOW_RETRY_FIRST_S = 0.5
WINDOW_RETRY_MAX_S = 5.0
DEFAULT_PROBE_INTERVAL_S = 5.0
EVIDENCE_KEPT = 5  # per verdict kind, so the task stays far below Cloud Tasks' 100 KB


class ProbeVerdict(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class IntervalVerdict:
    """What the analysis of one probe interval found; ``evidence`` says why, for people."""

    verdict: ProbeVerdict
    evidence: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)  # numbers, log lines, window (analysis.Verdict)


@dataclass(frozen=True)
class ProbeInterval:
    """One closed probe interval of a check, as the analysis sees it.

    ``start``/``end`` are epoch seconds; ``probes`` are this interval's GETs
    (path, status, latency_ms, error); ``release_id``/``stage_run_id``/``url`` say what
    was deployed, so telemetry can be filtered to that revision."""

    release_id: str
    stage: str
    stage_run_id: str
    url: str
    phase: str  # "window" (the check just passed) or "bake"
    start: float
    end: float
    probes: tuple[Mapping[str, Any], ...] = ()


IntervalAnalysis = Callable[[Mapping[str, Any], ProbeInterval], IntervalVerdict]


def no_analysis(check: Mapping[str, Any], interval: ProbeInterval) -> IntervalVerdict:
    """The default until criteria are configured: the GETs alone decide."""
    return IntervalVerdict(ProbeVerdict.PASS, "no analysis criteria configured")


@dataclass(frozen=True)
class ProbeTask:
    """One scheduled probe of one stage run. ``seq`` counts the probes of the run."""

    release_id: str
    stage: str
    stage_run_id: str
    kind: str
    pipeline_digest: str
    started_at: float  # when the stage run started (the first probe was scheduled)
    deadline: float  # the stage's timeout: after it the chain stops and the gate fails the stage
    seq: int = 0
    handle: Mapping[str, Any] = field(default_factory=dict)
    check: Mapping[str, Any] = field(default_factory=dict)  # progress of a check (see CheckProgress)

    @property
    def task_id(self) -> str:
        """Cloud Tasks de-duplicates by task id; a hash prefix spreads the ids, as its docs ask."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", self.stage_run_id)[-400:]
        prefix = hashlib.sha256(self.stage_run_id.encode()).hexdigest()[:8]
        return f"{prefix}-{safe}-p{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "ProbeTask":
        if not isinstance(data, Mapping):
            raise MalformedEvent("probe task is not a JSON object")
        try:
            task = cls(
                release_id=_text(data, "release_id"), stage=_text(data, "stage"),
                stage_run_id=_text(data, "stage_run_id"), kind=_text(data, "kind"),
                pipeline_digest=_text(data, "pipeline_digest"), started_at=float(data["started_at"]),
                deadline=float(data["deadline"]), seq=int(data.get("seq", 0)),
                handle=dict(data.get("handle") or {}), check=dict(data.get("check") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedEvent(f"probe task is missing or has a bad field: {exc}") from None
        if task.kind not in FOLLOWED_KINDS:
            raise MalformedEvent(f"probe task of kind {task.kind!r}: only {sorted(FOLLOWED_KINDS)} are followed")
        return task

    def next(self, **changes: Any) -> "ProbeTask":
        return replace(self, seq=self.seq + 1, **changes)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def first_probe_task(*, release_id: str, stage: str, stage_run_id: str, kind: str, pipeline_digest: str,
                     now: float, timeout_s: float, handle: Mapping[str, Any]) -> ProbeTask:
    return ProbeTask(release_id, stage, stage_run_id, kind, pipeline_digest, started_at=now,
                     deadline=now + timeout_s, seq=0, handle=dict(handle))


def poll_delay(seq: int) -> float:
    """Seconds from probe ``seq - 1`` (or the start) to probe ``seq``: 1, 1.5, 2.25, then 3."""
    return min(FIRST_POLL_S * POLL_MULTIPLIER ** max(seq, 0), MAX_POLL_GAP_S)


# -- checks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What a probe does next: schedule ``task`` at ``at``, or finish with ``outcome``."""

    task: ProbeTask | None = None
    at: float | None = None
    outcome: Outcome | None = None
    reason: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)


def check_config(handle: Mapping[str, Any]) -> dict[str, Any]:
    """The check as the executor resolved it at start (url, paths, window_s, bake_s, interval_s, audience)."""
    return {"url": str(handle.get("url", "")), "paths": [str(p) for p in handle.get("paths") or []],
            "window_s": float(handle.get("window_s", 60)), "bake_s": float(handle.get("bake_s", 0)),
            "interval_s": float(handle.get("interval_s", DEFAULT_PROBE_INTERVAL_S)),
            "max_extension_s": float(handle.get("max_extension_s", 0)),
            "audience": str(handle.get("audience", "")),  # set: a private service, GETs carry an ID token
            "analysis": dict(handle.get("analysis") or {})}


def paths_to_probe(task: ProbeTask) -> list[str]:
    """Window: only the paths that have not answered 2xx yet; bake: all of them."""
    config = check_config(task.handle)
    if task.check.get("phase") == "bake":
        return config["paths"]
    passed = {r["path"] for r in task.check.get("checks", []) if _ok(r.get("status"))}
    return [p for p in config["paths"] if p not in passed]


def check_step(task: ProbeTask, probes: list[Mapping[str, Any]], now: float, analyse: IntervalAnalysis) -> Step:
    """Fold one round of GETs into the check's progress and say what comes next."""
    config = check_config(task.handle)
    progress = dict(task.check)
    if progress.get("phase", "window") == "window":
        return _window_step(task, config, progress, probes, now, analyse)
    return _bake_step(task, config, progress, probes, now, analyse)


def _ok(status: Any) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def _window_step(task, config, progress, probes, now, analyse) -> Step:
    records = {r["path"]: dict(r) for r in progress.get("checks", [])}
    for probe in probes:
        record = records.setdefault(probe["path"], {"path": probe["path"], "status": None, "attempts": 0,
                                                    "latency_ms": None})
        record["attempts"] += 1
        record.update(status=probe.get("status"), latency_ms=probe.get("latency_ms"))
        record.pop("error", None)
        if probe.get("error"):
            record["error"] = probe["error"]
    checks = [records.get(p, {"path": p, "status": None, "attempts": 0, "latency_ms": None})
              for p in config["paths"]]
    progress["checks"] = checks
    result = {"url": config["url"], "checks": checks}
    if all(_ok(c["status"]) for c in checks):
        verdict = analyse(config, _interval(task, "window", task.started_at, now, probes))
        progress = _record(progress, verdict)
        if verdict.verdict is ProbeVerdict.FAIL:
            return Step(outcome=Outcome.FAILED, reason=f"analysis failed the check: {verdict.evidence}",
                        result={**result, "analysis": _evidence(progress)})
        if not config["bake_s"]:
            return Step(outcome=Outcome.SUCCEEDED, result={**result, **_analysis_result(progress)})
        progress.update(phase="bake", bake_from=now, bake_until=now + config["bake_s"], rounds=0, last_at=now)
        return Step(task=task.next(check=progress), at=min(now + config["interval_s"], progress["bake_until"]))
    window_until = task.started_at + config["window_s"]
    if now >= window_until:
        return Step(outcome=Outcome.FAILED, reason=_window_reason(checks), result=result)
    retries = int(progress.get("retries", 0))
    delay = min(WINDOW_RETRY_FIRST_S * 2 ** retries, WINDOW_RETRY_MAX_S)
    progress["retries"] = retries + 1
    return Step(task=task.next(check=progress), at=min(now + delay, window_until))


def _window_reason(checks: list[Mapping[str, Any]]) -> str:
    bad = [c for c in checks if not _ok(c["status"])]
    return "; ".join(
        f"GET {c['path']} " + (f"answered {c['status']}" if c["status"] is not None else f"failed ({c.get('error')})")
        + f" after {c['attempts']} attempt(s)" for c in bad)


def _bake_step(task, config, progress, probes, now, analyse) -> Step:
    progress["rounds"] = int(progress.get("rounds", 0)) + 1
    bake = {"bake_s": config["bake_s"], "rounds": progress["rounds"], "failed": ""}
    base = {"url": config["url"], "checks": progress.get("checks", [])}
    bad = next((p for p in probes if not _ok(p.get("status"))), None)
    if bad is not None:
        what = f"answered {bad['status']}" if bad.get("status") is not None else f"failed ({bad.get('error')})"
        bake["failed"] = f"GET {bad['path']} {what}"
        return Step(outcome=Outcome.FAILED, reason=f"{bake['failed']} during the {config['bake_s']:.0f}s bake",
                    result={**base, "bake": bake, **_analysis_result(progress)})
    verdict = analyse(config, _interval(task, "bake", float(progress.get("last_at", now)), now, probes))
    progress = _record(progress, verdict)
    progress["last_at"] = now
    if verdict.verdict is ProbeVerdict.FAIL:
        bake["failed"] = f"analysis: {verdict.evidence}"
        return Step(outcome=Outcome.FAILED, reason=f"analysis failed the bake: {verdict.evidence}",
                    result={**base, "bake": bake, **_analysis_result(progress)})
    if now >= float(progress["bake_until"]):
        if progress.get("passes", 0) == 0 and progress.get("inconclusive", 0) > 0:
            # Too little to judge: bake on, up to the checklist's extension, then fail closed.
            extended_until = float(progress["bake_from"]) + config["bake_s"] + config["max_extension_s"]
            if now < extended_until:
                progress["bake_until"] = min(now + config["interval_s"], extended_until)
                progress["extended_s"] = round(float(progress["bake_until"]) - float(progress["bake_from"])
                                               - config["bake_s"], 1)
                return Step(task=task.next(check=progress), at=float(progress["bake_until"]))
            extended = f" (extended by {config['max_extension_s']:.0f}s)" if config["max_extension_s"] else ""
            reason = f"analysis was inconclusive for every interval of the bake{extended}: " + "; ".join(
                progress.get("evidence", [])[-1:])
            bake["failed"] = "inconclusive"
            return Step(outcome=Outcome.FAILED, reason=reason, result={**base, "bake": bake, **_analysis_result(progress)})
        return Step(outcome=Outcome.SUCCEEDED, result={**base, "bake": bake, **_analysis_result(progress)})
    return Step(task=task.next(check=progress), at=min(now + config["interval_s"], float(progress["bake_until"])))


def _interval(task: ProbeTask, phase: str, start: float, end: float, probes) -> ProbeInterval:
    return ProbeInterval(task.release_id, task.stage, task.stage_run_id, str(task.handle.get("url", "")), phase,
                         start, end, tuple(dict(p) for p in probes))


def _record(progress: dict[str, Any], verdict: IntervalVerdict) -> dict[str, Any]:
    progress = dict(progress)
    key = {ProbeVerdict.PASS: "passes", ProbeVerdict.FAIL: "fails", ProbeVerdict.INCONCLUSIVE: "inconclusive"}
    progress[key[verdict.verdict]] = int(progress.get(key[verdict.verdict], 0)) + 1
    if verdict.details:
        progress["latest"] = dict(verdict.details)  # the last verdict with its numbers and log lines
    if verdict.evidence and verdict.verdict is not ProbeVerdict.PASS:
        progress["evidence"] = (list(progress.get("evidence", [])) + [verdict.evidence])[-EVIDENCE_KEPT:]
    elif verdict.evidence:
        progress["last_pass"] = verdict.evidence
    return progress


def _evidence(progress: Mapping[str, Any]) -> dict[str, Any]:
    return {k: progress[k] for k in ("passes", "fails", "inconclusive", "evidence", "last_pass", "latest", "extended_s")
            if k in progress}


def _analysis_result(progress: Mapping[str, Any]) -> dict[str, Any]:
    evidence = _evidence(progress)
    return {"analysis": evidence} if evidence else {}


# -- the task body on the wire -----------------------------------------------------------

PROBE_SIGNATURE_HEADER = "X-Release-Probe-Signature"


def _probe_key(secret: bytes) -> bytes:
    # Derived, so a probe signature can never pass for an approval link's and back.
    return hmac.new(secret, b"release-probe-v1", hashlib.sha256).digest()


def encode_task(task: ProbeTask, keyring: Keyring) -> tuple[bytes, str]:
    """The JSON body of a probe task and its signature header value ``<kid>.<hex hmac>``."""
    body = json.dumps(task.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    kid = keyring.current_kid
    mac = hmac.new(_probe_key(keyring.secret(kid)), body, hashlib.sha256).hexdigest()
    return body, f"{kid}.{mac}"


def decode_task(body: bytes, signature: str, keyring: Keyring) -> ProbeTask:
    """The task of a genuine body; raises MalformedEvent when unsigned, altered or unreadable.

    The probe URL is private on GCP (only the tasks service account may invoke it); the
    signature makes the body itself a fact rather than a claim, since a probe publishes
    a stage's finish."""
    kid, _, mac = (signature or "").partition(".")
    secret = keyring.secret(kid) if kid else None
    if secret is None or not mac:
        raise MalformedEvent("probe task is not signed with a configured key")
    expected = hmac.new(_probe_key(secret), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise MalformedEvent("probe task signature does not match its body")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent("probe task body is not JSON") from None
    return ProbeTask.from_dict(data)
