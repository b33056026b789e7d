"""A stage's result as types: one frozen dataclass per stage kind, read from the stored mapping here.

The release document keeps each stage's result as the mapping the executors, probes and gate
wrote (``StageState.result``; what is stored stays as it was, so documents written by any
earlier version still read). This module is the one place that reads its keys: everything
else (gate, dispatcher, notes, dashboard, approval pages, CLI) asks ``result_of(kind, raw)``
and reads fields (``tests/unit/test_layers.py`` fails on a key read of a result elsewhere).
Reading is as forgiving as the readers it replaced: a missing or mistyped field reads as absent.

Which kind writes what:
* build and job: ``log_url`` (build) or ``log_uri`` (execution), the ``image`` a job ran, JUnit counts of a test step,
  ``digest`` of a pushed image, a migration's ``dry_run_ms``/``apply_ms``, and the chaos
  verdict (``passed``, ``error_rate``, ...) spread from $BUILDER_OUTPUT;
* deploy and traffic: ``revisions`` (service, revision, percent, ``serving_before``), and
  the rollbacks done to them (``rolled_back``, ``rollback_error``);
* check: ``url``, the answers of its paths (``checks``), the ``bake`` and its canary
  ``analysis``, and an approver's ``bake_skip`` request;
* approval: the decision (approver, decision, at, reason);
* preflight: the pipeline account it checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

JUNIT_KEYS = ("tests", "failures", "errors", "skipped")


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return str(value) if value else ""


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, (list, tuple)) else []


@dataclass(frozen=True)
class JunitCounts:
    tests: int
    failures: int
    errors: int
    skipped: int


@dataclass(frozen=True)
class ChaosVerdict:
    """``python -m shared.domain.chaos``'s verdict, as the stage result carries it."""

    passed: bool
    error_rate: float | None
    p95_ms: float | None
    max_error_rate: float | None
    max_p95_ms: float | None
    reasons: tuple[str, ...]
    stored: Mapping[str, Any]  # the verdict's own keys as stored, for the approval page's summary
    decided_by: tuple[tuple[str, str], ...] = ()  # (figure, the report it came from): the worst report counts


@dataclass(frozen=True)
class RevisionTarget:
    service: str
    revision: str
    percent: int | None
    serving_before: str  # what served before the release's first attempt (where a rollback goes)


@dataclass(frozen=True)
class Rollback:
    service: str
    revision: str  # rolled back to
    from_revision: str
    at: float | None
    by: str
    why: str
    request: str  # the operator request of a manual rollback ("" for the gate's own)
    manual: bool  # done by hand (relctl rollback), not by the gate after a failed check


@dataclass(frozen=True)
class PathAnswer:
    """One path of a check: its last status (None when it never answered), latency, attempts."""

    path: str
    status: int | None
    error: str
    latency_ms: float | None
    attempts: Any


@dataclass(frozen=True)
class BakeSkip:
    by: str
    at: float | None
    reason: str
    request: str
    stored: Mapping[str, Any]


@dataclass(frozen=True)
class EndedEarly:
    """The skip probe's verdict on a bake an approver asked to end (``bake.ended_early``)."""

    by: str
    reason: str
    at: float | None


@dataclass(frozen=True)
class Analysis:
    """The canary analysis of a check's intervals; ``latest`` is the last verdict as stored."""

    latest: Mapping[str, Any] | None
    passes: int
    inconclusive: int
    fails: int


@dataclass(frozen=True)
class StageResult:
    """What every kind may carry: the log link and the rollbacks done to what the stage made."""

    log_url: str = ""
    rolled_back: tuple[Rollback, ...] = ()
    rollback_error: str = ""
    stored: Mapping[str, Any] = field(default_factory=dict, repr=False)  # as written, for the JSON views


@dataclass(frozen=True)
class BuildResult(StageResult):
    build_id: str = ""
    digest: str = ""
    junit: JunitCounts | None = None
    chaos: ChaosVerdict | None = None
    dry_run_ms: Any = None  # a migration's timings, shown as recorded ('?' when absent)
    apply_ms: Any = None
    timed_schema: bool = False  # a migration recorded its timings


@dataclass(frozen=True)
class JobResult(BuildResult):
    execution: str = ""
    image: str = ""  # the image the execution ran, as its template names it (the release's digest)


@dataclass(frozen=True)
class DeployResult(StageResult):
    revisions: tuple[RevisionTarget, ...] = ()
    image: str = ""
    # service -> the URL Cloud Run reported once the revision was ready (a GitHub deployment's environment_url)
    urls: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrafficResult(DeployResult):
    pass


@dataclass(frozen=True)
class CheckResult(StageResult):
    url: str = ""
    checks: tuple[PathAnswer, ...] | None = None  # None: no answers recorded (not even an empty list)
    analysis: Analysis | None = None
    bake_ended_early: EndedEarly | None = None  # the skip probe's verdict (relctl skip-bake)
    bake_skip: BakeSkip | None = None


@dataclass(frozen=True)
class ApprovalResult(StageResult):
    approver: str = ""
    decision: str = ""
    at: float | None = None
    reason: str = ""
    stored_decision: Mapping[str, Any] = field(default_factory=dict)  # approver/decision/at/reason as stored


@dataclass(frozen=True)
class PreflightResult(StageResult):
    service_account: str = ""


# -- reading the stored mapping (the one place that reads its keys) -----------------------------
def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
    rollbacks = tuple(Rollback(str(r.get("service", "") or ""), _text(r.get("revision")), _text(r.get("from")),
                               _number(r.get("at")), _text(r.get("by")), _text(r.get("why")), _text(r.get("request")),
                               bool(r.get("manual")))
                      for r in _dicts(raw.get("rolled_back")))
    return {"log_url": _text(raw.get("log_url") or raw.get("log_uri")), "rolled_back": rollbacks,
            "rollback_error": _text(raw.get("rollback_error")), "stored": raw}


def _junit(raw: Mapping[str, Any]) -> JunitCounts | None:
    if _number(raw.get("tests")) is None:
        return None
    return JunitCounts(*(int(raw.get(k) or 0) for k in JUNIT_KEYS))


CHAOS_KEYS = ("passed", "error_rate", "p95_ms", "max_error_rate", "max_p95_ms", "reasons")


def _chaos(raw: Mapping[str, Any]) -> ChaosVerdict | None:
    if "passed" not in raw:
        return None
    return ChaosVerdict(bool(raw["passed"]), _number(raw.get("error_rate")), _number(raw.get("p95_ms")),
                        _number(raw.get("max_error_rate")), _number(raw.get("max_p95_ms")),
                        tuple(str(r) for r in raw.get("reasons") or ()), {k: raw[k] for k in CHAOS_KEYS if k in raw},
                        tuple((str(k), v) for k, v in (raw.get("decided_by") or {}).items() if isinstance(v, str))
                        if isinstance(raw.get("decided_by"), Mapping) else ())


def _build_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {**_common(raw), "build_id": _text(raw.get("build_id")), "digest": _text(raw.get("digest")),
            "junit": _junit(raw), "chaos": _chaos(raw), "dry_run_ms": raw.get("dry_run_ms", "?"),
            "apply_ms": raw.get("apply_ms", "?"), "timed_schema": "dry_run_ms" in raw or "apply_ms" in raw}


def _revisions(raw: Mapping[str, Any]) -> tuple[RevisionTarget, ...]:
    return tuple(RevisionTarget(str(r.get("service", "") or ""), _text(r.get("revision")),
                                r.get("percent") if isinstance(r.get("percent"), int) else None,
                                _text(r.get("serving_before")))
                 for r in _dicts(raw.get("revisions")))


def _urls(raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    urls = raw.get("urls")
    return tuple((str(k), _text(v)) for k, v in urls.items() if v) if isinstance(urls, Mapping) else ()


def _check(raw: Mapping[str, Any]) -> CheckResult:
    checks = None
    if isinstance(raw.get("checks"), list):
        checks = tuple(PathAnswer(str(c.get("path", "") if c.get("path") is not None else ""),
                                  c.get("status") if isinstance(c.get("status"), int) else None,
                                  _text(c.get("error")), _number(c.get("latency_ms")), c.get("attempts", ""))
                       for c in _dicts(raw["checks"]))
    found = raw.get("analysis")
    analysis = None
    if isinstance(found, Mapping):
        latest = found.get("latest") if isinstance(found.get("latest"), Mapping) else None
        analysis = Analysis(latest, int(found.get("passes") or 0), int(found.get("inconclusive") or 0),
                            int(found.get("fails") or 0))
    bake = raw.get("bake")
    early = bake.get("ended_early") if isinstance(bake, Mapping) else None
    skip = raw.get("bake_skip")
    bake_skip = (BakeSkip(_text(skip.get("by")), _number(skip.get("at")), _text(skip.get("reason")),
                          _text(skip.get("request")), skip)
                 if isinstance(skip, Mapping) and skip else None)
    return CheckResult(**_common(raw), url=_text(raw.get("url")), checks=checks, analysis=analysis,
                       bake_ended_early=(EndedEarly(str(early.get("by", "")), str(early.get("reason", "")),
                                                    _number(early.get("at"))) if isinstance(early, Mapping) else None),
                       bake_skip=bake_skip)


def _approval(raw: Mapping[str, Any]) -> ApprovalResult:
    return ApprovalResult(**_common(raw), approver=_text(raw.get("approver")), decision=_text(raw.get("decision")),
                          at=_number(raw.get("at")), reason=_text(raw.get("reason")),
                          stored_decision={k: raw[k] for k in ("approver", "decision", "at", "reason") if k in raw})


READERS = {
    "build": lambda raw: BuildResult(**_build_fields(raw)),
    "job": lambda raw: JobResult(**_build_fields(raw), execution=_text(raw.get("execution")),
                                 image=_text(raw.get("image"))),
    "deploy": lambda raw: DeployResult(**_common(raw), revisions=_revisions(raw), image=_text(raw.get("image")),
                                       urls=_urls(raw)),
    "traffic": lambda raw: TrafficResult(**_common(raw), revisions=_revisions(raw), image=_text(raw.get("image"))),
    "check": _check,
    "approval": _approval,
    "preflight": lambda raw: PreflightResult(**_common(raw), service_account=_text(raw.get("service_account"))),
}


def result_of(kind: Any, raw: Mapping[str, Any] | None) -> StageResult:
    """The typed result of a stage of ``kind`` (a StageKind or its value) from its stored mapping."""
    raw = raw if isinstance(raw, Mapping) else {}
    return READERS[getattr(kind, "value", kind)](raw)


def build_id_of(raw: Mapping[str, Any]) -> str:
    """The build a result names, whatever the stage's kind ("" for none): a notification counts
    only for the build its stage recorded."""
    return _text(raw.get("build_id"))


def revisions_as_stored(raw: Mapping[str, Any]) -> list[Any]:
    """The deploy executor's targets as it recorded them, for its poll to wait on the same ones."""
    return list(raw.get("revisions") or [])


def rolled_back_as_stored(raw: Mapping[str, Any]) -> list[Any]:
    """The stored rollback entries, for the gate to append one and write the list back."""
    return list(raw.get("rolled_back") or [])


def common_result(raw: Mapping[str, Any] | None) -> StageResult:
    """Only what every kind may carry (log link, rollbacks), for a reader that does not know the kind."""
    return StageResult(**_common(raw if isinstance(raw, Mapping) else {}))


def results_of(kind: Any, st: Any) -> list[StageResult]:
    """Every attempt's result of a StageState, oldest first, the current one last."""
    return [result_of(kind, a.result) for a in st.history] + [result_of(kind, st.result)]


def bake_plan(raw: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(window_s, bake_s) of a running check as its executor resolved them in the handle, or None
    when the check has no bake (what `relctl watch` and the dashboard show while a bake goes on)."""
    raw = raw if isinstance(raw, Mapping) else {}
    bake, window = raw.get("bake_s"), raw.get("window_s")
    if not isinstance(bake, (int, float)) or isinstance(bake, bool) or not bake:
        return None
    return (float(window) if isinstance(window, (int, float)) and not isinstance(window, bool) else 0.0), float(bake)
