"""The chaos smoke verdict (stage 10a): read the run's reports as the tools wrote them, judge them
against the QA limits.

Pure functions over file contents plus a small CLI for the Cloud Build step::

    python -m shared.domain.chaos --junit reports/chaos-junit.xml --json reports/chaos.json \\
        --k6 reports/k6-summary.json --locust reports/locust_stats.csv \\
        --max-error-rate 0.05 --max-p95-ms 800

Each flag may be given more than once. Accepted reports (the parsers say exactly which shapes and
which cross-checks): ``--junit`` JUnit XML from pytest, Node's test runner, Surefire and others
(shared/domain/chaos_tests.py); ``--json`` pytest-json-report or ``{requests, errors, p95_ms}``
(same module); ``--k6`` k6's ``--summary-export``, a ``handleSummary`` JSON or the ``--out json``
stream (chaos_k6.py); ``--locust`` Locust's ``_stats.csv`` (its ``_failures.csv`` beside it is
cross-checked when present) or its ``--json`` output (chaos_locust.py).

A truncated, empty, mis-shaped or self-contradictory report fails the gate naming the file and the
problem; it is never read as far as it goes.

Verdict
-------
Each report yields an error rate (and maybe a P95). Units differ between reports (tests versus
HTTP requests), so pooling them would let a large source dilute a small one: the overall error
rate is the highest of the reports' rates, and the overall P95 the highest P95 reported
(percentiles cannot be merged; the highest is the safe side). ``decided_by`` names the report each
figure came from. The gate passes only when every given report was read, the error rate is
< max_error_rate, some report measured a P95, and that P95 is < max_p95_ms.
Exit status: 0 pass, 1 gate failed (including unreadable reports), 2 usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from shared.domain.chaos_k6 import parse_k6
from shared.domain.chaos_locust import check_failures, parse_locust
from shared.domain.chaos_report import ArtifactError, Measurement
from shared.domain.chaos_tests import parse_json_report, parse_junit

__all__ = ["ArtifactError", "Measurement", "PARSERS", "compact", "evaluate", "judge", "main", "parse_report", "read_artifact",
           "parse_json_report", "parse_junit", "parse_k6", "parse_locust"]

MAX_OUTPUT_BYTES = 4000  # far below what Cloud Build keeps of a step's $BUILDER_OUTPUT/output ("the first 50KB")


PARSERS: dict[str, Callable[[str, str], Measurement]] = {
    "junit": parse_junit,
    "json": parse_json_report,
    "k6": parse_k6,
    "locust": parse_locust,
}


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {kind} artifact is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {kind} artifact is unreadable ({type(exc).__name__})") from None


def parse_report(kind: str, text: str, file: str) -> Measurement:
    """One report's measurement. The gate fails closed: a shape no parser foresaw is a named
    failure of that report, never a crash of the verdict step or a pass."""
    try:
        return PARSERS[kind](text, file)
    except ArtifactError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{file}: the {kind} report has a shape this gate does not read "
                            f"({type(exc).__name__})") from None


def read_artifact(kind: str, path: str | Path) -> Measurement:
    path = Path(path)
    result = parse_report(kind, _read_text(path, kind), str(path))
    if kind == "locust" and path.name.endswith("_stats.csv"):
        failures = path.with_name(path.name.removesuffix("_stats.csv") + "_failures.csv")
        if failures.exists():  # Locust writes both at once; they must count the same failures
            check_failures(result, _read_text(failures, kind), str(failures))
    return result


def _named(m: Measurement) -> str:
    return f"{m.file} ({m.dialect})" if m.dialect else m.file


def judge(
    measurements: list[Measurement], problems: list[str], max_error_rate: float, max_p95_ms: float
) -> dict[str, Any]:
    """The verdict from what was read (``measurements``) and what could not be (``problems``).

    When reports disagree the worst counts; ``decided_by`` names the report behind each figure."""
    reasons = list(problems)
    if not measurements and not problems:
        reasons.append("no artifact was given")
    worst_rate = max(measurements, key=lambda m: m.error_rate, default=None)
    timed = [m for m in measurements if m.p95_ms is not None]
    worst_p95 = max(timed, key=lambda m: m.p95_ms, default=None)
    error_rate = worst_rate.error_rate if worst_rate else None
    p95 = worst_p95.p95_ms if worst_p95 else None
    if worst_rate and worst_rate.error_rate >= max_error_rate:
        reasons.append(f"error rate {worst_rate.error_rate:.2%} >= {max_error_rate:.2%} (from {_named(worst_rate)})")
    if measurements and worst_p95 is None:
        reasons.append("no artifact reports a P95 latency")
    elif worst_p95 and worst_p95.p95_ms >= max_p95_ms:
        reasons.append(f"P95 {worst_p95.p95_ms:.0f} ms >= {max_p95_ms:.0f} ms (from {_named(worst_p95)})")
    decided_by = {}
    if worst_rate:
        decided_by["error_rate"] = _named(worst_rate)
    if worst_p95:
        decided_by["p95_ms"] = _named(worst_p95)
    return {
        "passed": not reasons,
        "error_rate": None if error_rate is None else round(error_rate, 6),
        "p95_ms": p95,
        "max_error_rate": max_error_rate,
        "max_p95_ms": max_p95_ms,
        "reasons": reasons,
        "decided_by": decided_by,
        "sources": [asdict(m) for m in measurements],
    }


def _paths(given: str | Path | Iterable[str | Path] | None) -> list[str | Path]:
    if given is None:
        return []
    return [given] if isinstance(given, (str, Path)) else list(given)


def evaluate(artifacts: Mapping[str, str | Path | Iterable[str | Path] | None], max_error_rate: float,
             max_p95_ms: float) -> dict[str, Any]:
    """Read every given report (kind -> path or paths) and judge them together."""
    measurements, problems = [], []
    for kind, given in artifacts.items():
        for path in _paths(given):
            try:
                measurements.append(read_artifact(kind, path))
            except ArtifactError as exc:
                problems.append(str(exc))
    return judge(measurements, problems, max_error_rate, max_p95_ms)


def compact(verdict: dict[str, Any], limit: int = MAX_OUTPUT_BYTES) -> str:
    """JSON of the verdict under ``limit`` bytes: detail is dropped before the decision is."""
    text = json.dumps(verdict, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    slim = {**verdict, "sources": [{"kind": s["kind"], "error_rate": s["error_rate"], "p95_ms": s["p95_ms"]} for s in verdict["sources"]]}
    slim["decided_by"] = {k: v[-300:] for k, v in verdict.get("decided_by", {}).items()}
    slim["reasons"] = [r[:300] for r in verdict["reasons"]][:5]
    text = json.dumps(slim, separators=(",", ":"))
    if len(text.encode()) <= limit:
        return text
    bare = {k: verdict[k] for k in ("passed", "error_rate", "p95_ms", "max_error_rate", "max_p95_ms")}
    bare["reasons"] = [r[:200] for r in verdict["reasons"]][:3]
    return json.dumps(bare, separators=(",", ":"))


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m shared.domain.chaos", description="Judge chaos smoke artifacts.")
    for kind in PARSERS:
        parser.add_argument(f"--{kind}", metavar="FILE", action="append", help=f"{kind} report (may repeat)")
    parser.add_argument("--max-error-rate", type=float, default=0.05)
    parser.add_argument("--max-p95-ms", type=float, default=800.0)
    args = parser.parse_args(argv)
    verdict = evaluate({kind: getattr(args, kind) for kind in PARSERS}, args.max_error_rate, args.max_p95_ms)
    text = compact(verdict)
    print(text)
    if env.get("BUILDER_OUTPUT"):
        Path(env["BUILDER_OUTPUT"], "output").write_text(text)
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
