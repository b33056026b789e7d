"""Canary analysis: the QA checklist (criteria) against what was measured, as a verdict.

I/O first, then a pure decision, as cloud-run-release-manager's ``health.Diagnose``:
the telemetry adapters (``shared/adapters/telemetry.py``) gather ``Measurements`` for one
window; ``diagnose(criteria, measurements)`` judges them and explains itself in numbers.
No clock, no client: the window's bounds arrive as text with the measurements.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from shared.domain import stats
from shared.domain.pipeline_schema import SEVERITIES, duration_s
from shared.domain.probes import ProbeVerdict  # one closed set of outcomes: pass, fail, inconclusive

IN_WORDS = {"pass": "passed", "fail": "failed", "inconclusive": "inconclusive"}
EVIDENCE_LINES = 5  # offending log lines kept as evidence: enough to act on, small enough for a notice


@dataclass(frozen=True)
class Criteria:
    """The QA checklist of one check stage (``params.analysis`` in the pipeline file)."""

    window_s: int = 300  # how far back each interval looks
    interval_s: int = 60  # how often the bake asks for a verdict
    max_extension_s: int = 300  # how long an inconclusive bake may run past its end
    min_requests: int = 50  # per revision, before a passing verdict is believed
    max_5xx_ratio: float = 0.01
    p95_limit_ms: float = 1000.0
    max_latency_ratio: float = 1.5  # canary P95 over stable P95
    min_latency_delta_ms: float = 25.0  # and by at least this much: 1 ms against 2 ms is noise, not a regression
    log_severity: str = "ERROR"  # entries at or above it are error logs
    log_patterns: tuple[str, ...] = ("Traceback", "OperationalError")
    max_error_logs_per_min: float = 0.0
    confidence: float = 0.99  # of each statistical test; high because every interval tests again

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None) -> "Criteria":
        """From a validated ``params.analysis`` mapping (pipeline_schema checked every field)."""
        raw = dict(raw or {})
        values: dict[str, Any] = {}
        for name in ("window", "interval", "max_extension"):
            if name in raw:
                values[f"{name}_s"] = duration_s(raw.pop(name))
        if "log_patterns" in raw:
            values["log_patterns"] = tuple(raw.pop("log_patterns"))
        values.update(raw)
        return cls(**values)


@dataclass(frozen=True)
class AnalysisTarget:
    """Which revisions one check judges: the canary, and the stable one beside it (None in staging)."""

    service: str
    canary_revision: str
    stable_revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Distribution:
    """A latency distribution in milliseconds with explicit bucket bounds (see stats)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def percentile(self, q: float) -> tuple[float, bool] | None:
        return stats.percentile_from_buckets(self.bounds, self.counts, q)


@dataclass(frozen=True)
class RevisionTraffic:
    revision: str
    requests: int
    errors_5xx: int
    latency: Distribution | None = None
    raw_latencies_ms: tuple[float, ...] = ()  # from request logs, for the rank test


@dataclass(frozen=True)
class LogLine:
    timestamp: str
    severity: str
    text: str


@dataclass(frozen=True)
class Measurements:
    window_start: str  # RFC 3339
    window_end: str
    canary: RevisionTraffic
    stable: RevisionTraffic | None  # None in staging: no revision to compare with
    canary_logs: tuple[LogLine, ...] = ()  # candidate lines of the canary (the adapter pre-filters)
    window_s: int = 0


@dataclass(frozen=True)
class Finding:
    check: str  # traffic, error_ratio, latency, logs
    outcome: ProbeVerdict
    detail: str


@dataclass(frozen=True)
class Verdict:
    outcome: ProbeVerdict
    reason: str  # one line: the deciding finding(s)
    findings: tuple[Finding, ...]
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "reason": self.reason,
                "findings": [{**asdict(f), "outcome": f.outcome.value} for f in self.findings],
                "evidence": dict(self.evidence)}


def diagnose(criteria: Criteria, m: Measurements) -> Verdict:
    """Judge one window of telemetry of the canary (and of the stable revision, if any).

    Precedence of outcomes: FAILED wins over INCONCLUSIVE, which wins over PASSED.
    - FAILED when any check fails. Failures are believed at any traffic volume: each
      statistical test accounts for its sample size, and an offending log line is a fact.
    - INCONCLUSIVE when nothing failed but a revision saw fewer than ``min_requests``
      requests: too little traffic is never a silent pass.
    - PASSED otherwise.
    The checks: error ratio (with a stable revision: a one-sided Fisher exact test at
    ``confidence`` AND the canary above ``max_5xx_ratio``; without one, the Wilson lower
    bound above ``max_5xx_ratio``), latency (P95 from the distribution buckets over
    ``p95_limit_ms``; with a stable revision also P95 over ``max_latency_ratio`` times the
    stable one and ``min_latency_delta_ms`` above it, confirmed by a Mann-Whitney test on raw latencies where both sides have
    them), and logs (lines at or above ``log_severity`` or matching a pattern, per minute
    over ``max_error_logs_per_min``).
    """
    findings = [_traffic(criteria, m), _error_ratio(criteria, m), _latency(criteria, m), _logs(criteria, m)]
    findings = [f for f in findings if f is not None]
    failed = [f for f in findings if f.outcome is ProbeVerdict.FAIL]
    unsure = [f for f in findings if f.outcome is ProbeVerdict.INCONCLUSIVE]
    if failed:
        outcome, deciding = ProbeVerdict.FAIL, failed
    elif unsure:
        outcome, deciding = ProbeVerdict.INCONCLUSIVE, unsure
    else:
        outcome, deciding = ProbeVerdict.PASS, findings
    reason = "; ".join(f.detail for f in deciding)
    return Verdict(outcome, reason, tuple(findings), _evidence(criteria, m))


def _ratio(x: int, n: int) -> str:
    return f"{100 * x / n:.1f} % ({x} of {n})" if n else "no requests"


def _traffic(c: Criteria, m: Measurements) -> Finding:
    short = [r for r in (m.canary, m.stable) if r is not None and r.requests < c.min_requests]
    if short:
        names = ", ".join(f"{r.revision} had {r.requests}" for r in short)
        return Finding("traffic", ProbeVerdict.INCONCLUSIVE,
                       f"too little traffic in the window: {names} requests; at least {c.min_requests} needed")
    counts = ", ".join(f"{r.revision} {r.requests}" for r in (m.canary, m.stable) if r is not None)
    return Finding("traffic", ProbeVerdict.PASS, f"requests in the window: {counts}")


def _error_ratio(c: Criteria, m: Measurements) -> Finding | None:
    canary, stable = m.canary, m.stable
    if canary.requests <= 0:
        return None
    low, high = stats.wilson_interval(canary.errors_5xx, canary.requests, c.confidence)
    ratio = canary.errors_5xx / canary.requests
    told = f"canary 5xx {_ratio(canary.errors_5xx, canary.requests)}, {c.confidence:.0%} interval " \
           f"{100 * low:.1f}–{100 * high:.1f} %"
    if stable is not None and stable.requests > 0:
        p = stats.fisher_greater(canary.errors_5xx, canary.requests, stable.errors_5xx, stable.requests)
        versus = f"{told} vs stable {_ratio(stable.errors_5xx, stable.requests)} (Fisher p = {p:.2g})"
        if p < 1 - c.confidence and ratio > c.max_5xx_ratio:
            return Finding("error_ratio", ProbeVerdict.FAIL,
                           f"{versus}: higher than stable beyond chance and above the {100 * c.max_5xx_ratio:g} % limit")
        return Finding("error_ratio", ProbeVerdict.PASS, versus)
    if low > c.max_5xx_ratio:
        return Finding("error_ratio", ProbeVerdict.FAIL, f"{told}: above the {100 * c.max_5xx_ratio:g} % limit")
    return Finding("error_ratio", ProbeVerdict.PASS, told)


def _p95(r: RevisionTraffic | None) -> tuple[float, bool] | None:
    if r is None or r.latency is None:
        return None
    return r.latency.percentile(0.95)


def _ms(p: tuple[float, bool]) -> str:
    return f"{p[0]:.0f} ms" if p[1] else f">= {p[0]:.0f} ms"


def _latency(c: Criteria, m: Measurements) -> Finding | None:
    canary_p95, stable_p95 = _p95(m.canary), _p95(m.stable)
    if canary_p95 is None or m.canary.requests < c.min_requests:
        return None  # a percentile of a handful of requests decides nothing
    told = f"canary P95 {_ms(canary_p95)}"
    if canary_p95[0] > c.p95_limit_ms:
        return Finding("latency", ProbeVerdict.FAIL, f"{told}: over the {c.p95_limit_ms:g} ms limit")
    if stable_p95 is None or m.stable is None or m.stable.requests < c.min_requests:
        return Finding("latency", ProbeVerdict.PASS, f"{told} (limit {c.p95_limit_ms:g} ms)")
    versus = f"{told} vs stable {_ms(stable_p95)}"
    slower = (canary_p95[0] > c.max_latency_ratio * max(stable_p95[0], 1e-9)
              and canary_p95[0] - stable_p95[0] > c.min_latency_delta_ms)
    if not slower:
        return Finding("latency", ProbeVerdict.PASS,
                       f"{versus} (at most {c.max_latency_ratio:g}x or +{c.min_latency_delta_ms:g} ms allowed)")
    first, second = m.canary.raw_latencies_ms, m.stable.raw_latencies_ms
    if first and second:
        rank = stats.mann_whitney_greater(first, second)
        versus += f"; Mann-Whitney on {len(first)}/{len(second)} request latencies p = {rank.p_greater:.2g}"
        if rank.p_greater >= 1 - c.confidence:
            return Finding("latency", ProbeVerdict.PASS, f"{versus}: slower P95 but not beyond chance")
    return Finding("latency", ProbeVerdict.FAIL, f"{versus}: more than {c.max_latency_ratio:g}x slower")


def offending(c: Criteria, line: LogLine) -> bool:
    """A line fails the review when at or above the severity, or when a pattern matches."""
    severity = line.severity.upper() if line.severity.upper() in SEVERITIES else "DEFAULT"
    if SEVERITIES.index(severity) >= SEVERITIES.index(c.log_severity):
        return True
    return any(re.search(pattern, line.text) for pattern in c.log_patterns)


def _logs(c: Criteria, m: Measurements) -> Finding:
    bad = [line for line in m.canary_logs if offending(c, line)]
    minutes = max(m.window_s or c.window_s, 1) / 60
    rate = len(bad) / minutes
    told = f"{len(bad)} error log line(s) of {m.canary.revision} in {minutes:g} min ({rate:.2f}/min)"
    if rate > c.max_error_logs_per_min:
        first = bad[0].text.splitlines()[0][:200] if bad else ""
        return Finding("logs", ProbeVerdict.FAIL,
                       f"{told}, over {c.max_error_logs_per_min:g}/min; first: {bad[0].severity} {first!r}")
    return Finding("logs", ProbeVerdict.PASS, told)


def _evidence(c: Criteria, m: Measurements) -> dict[str, Any]:
    def side(r: RevisionTraffic | None) -> dict[str, Any] | None:
        if r is None:
            return None
        p95 = _p95(r)
        return {"revision": r.revision, "requests": r.requests, "errors_5xx": r.errors_5xx,
                "error_ratio": round(r.errors_5xx / r.requests, 4) if r.requests else None,
                "p95_ms": round(p95[0], 1) if p95 else None, "raw_latencies": len(r.raw_latencies_ms)}

    bad = [line for line in m.canary_logs if offending(c, line)]
    return {"window": {"start": m.window_start, "end": m.window_end, "seconds": m.window_s or c.window_s},
            "canary": side(m.canary), "stable": side(m.stable),
            "error_logs": len(bad),
            "log_lines": [asdict(line) | {"text": line.text[:500]} for line in bad[:EVIDENCE_LINES]]}


def evidence_lines(verdict: Mapping[str, Any]) -> list[str]:
    """A stored verdict (``Verdict.to_dict()``) as plain lines for people: notes, pages, notices."""
    evidence = verdict.get("evidence") or {}
    outcome = IN_WORDS.get(verdict.get("outcome", ""), "?")
    lines = [f"verdict: {outcome} — {verdict.get('reason', '')}"]
    window = evidence.get("window") or {}
    if window:
        lines.append(f"window: {window.get('start')} to {window.get('end')} ({window.get('seconds')} s)")
    for role in ("canary", "stable"):
        side = evidence.get(role)
        if not side:
            continue
        ratio = side.get("error_ratio")
        p95 = side.get("p95_ms")
        lines.append(f"{role} {side.get('revision')}: {side.get('requests')} requests, "
                     f"{side.get('errors_5xx')} 5xx ({'-' if ratio is None else f'{100 * ratio:.1f} %'}), "
                     f"P95 {'-' if p95 is None else f'{p95:g} ms'}")
    if evidence.get("error_logs"):
        lines.append(f"error log lines: {evidence['error_logs']}")
        for line in evidence.get("log_lines") or []:
            text = [t for t in str(line.get("text", "")).splitlines() if t.strip()]
            lines.append(f"  {line.get('timestamp')} {line.get('severity')} {log_headline(text)}"
                         + (f" (+{len(text) - 1} lines)" if len(text) > 1 else ""))
    return lines


def log_headline(text: list[str]) -> str:
    """The line of a log entry that says what went wrong: for a Python traceback its last line
    (``ZeroDivisionError: division by zero``), not "Traceback (most recent call last):"."""
    if not text:
        return ""
    if text[0].startswith("Traceback (most recent call last)"):
        return text[-1].strip()
    return text[0]


def summary_line(verdict: Mapping[str, Any]) -> str:
    """One line of a stored verdict: outcome, canary vs stable numbers, error logs."""
    evidence = verdict.get("evidence") or {}

    def side(name: str) -> str:
        s = evidence.get(name) or {}
        if not s:
            return ""
        ratio = s.get("error_ratio")
        p95 = s.get("p95_ms")
        return (f"{name} {s.get('requests')} req, {'-' if ratio is None else f'{100 * ratio:.1f} %'} 5xx, "
                f"P95 {'-' if p95 is None else f'{p95:g} ms'}")

    parts = [p for p in (side("canary"), side("stable")) if p]
    text = f"analysis {IN_WORDS.get(verdict.get('outcome', ''), '?')}: " + (" vs ".join(parts) or "no traffic measured")
    if evidence.get("error_logs"):
        text += f"; {evidence['error_logs']} error log line(s)"
    return text
