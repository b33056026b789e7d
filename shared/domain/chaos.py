"""The chaos smoke verdict (stage 10a): read the run's artifacts, judge them against the QA limits.

Pure functions over file contents plus a small CLI for the Cloud Build step::

    python -m shared.domain.chaos --junit reports/chaos-junit.xml --json reports/chaos.json \\
        --k6 reports/k6-summary.json --locust reports/locust_stats.csv \\
        --max-error-rate 0.05 --max-p95-ms 800

Accepted artifacts
------------------
* JUnit XML (``<testsuites>`` or ``<testsuite>``): tests, failures + errors. No latency.
* JSON report, one of two shapes:
  - pytest-json-report: ``{"summary": {"total": N, "failed": F, "error": E, ...}}``
    (errors = failed + error). Test durations are not request latency, so no P95.
  - plain: ``{"requests": N, "errors": E, "p95_ms": P}`` (``p95_ms`` optional).
* k6 summary JSON, ``--summary-export`` style (``metrics.http_req_failed.rate``,
  ``metrics.http_req_duration["p(95)"]``) or ``handleSummary`` style (the same under
  ``.values``); the request count comes from ``metrics.http_reqs.count`` when present.
* Locust stats CSV (``--csv`` prefix ``_stats.csv``): the ``Aggregated`` row's
  ``Request Count``, ``Failure Count`` and ``95%`` (older ``# requests`` / ``# failures`` too).

Verdict
-------
Each artifact yields an error rate (and maybe a P95). Units differ between artifacts
(tests versus HTTP requests), so pooling them would let a large source dilute a small
one: the overall error rate is the highest of the artifacts' rates, and the overall
P95 the highest P95 reported (percentiles cannot be merged; the highest is the safe
side). The gate passes only when every given artifact was read, the error rate is
< max_error_rate, some artifact reported a P95, and that P95 is < max_p95_ms.
Exit status: 0 pass, 1 gate failed (including unreadable artifacts), 2 usage error.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from shared.domain.errors import PipelineError

MAX_OUTPUT_BYTES = 4000  # far below what Cloud Build keeps of a step's $BUILDER_OUTPUT/output ("the first 50KB")


class ArtifactError(PipelineError):
    """An artifact is missing or cannot be read; the message names the file."""


@dataclass(frozen=True)
class Measurement:
    kind: str
    file: str
    requests: int | None
    errors: int | None
    error_rate: float
    p95_ms: float | None


def _rate(errors: float, total: float) -> float:
    return errors / total if total else 0.0


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number: {value!r}")
    return float(value)


def parse_junit(text: str, file: str = "junit") -> Measurement:
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ArtifactError(f"{file}: not valid JUnit XML ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ArtifactError(f"{file}: root element is <{root.tag}>, expected <testsuites> or <testsuite>")
    # Suites may or may not carry totals, and <testsuites> may repeat them: count the leaves.
    suites = [root] if root.tag == "testsuite" else root.findall(".//testsuite")
    tests = errors = 0
    for suite in suites:
        cases = suite.findall("testcase")
        if cases:
            tests += len(cases)
            errors += sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
        else:
            try:
                tests += int(suite.get("tests", 0))
                errors += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            except ValueError:
                raise ArtifactError(f"{file}: a <testsuite> has non-numeric counts") from None
    if tests == 0:
        raise ArtifactError(f"{file}: the JUnit report holds no tests")
    return Measurement("junit", file, tests, errors, _rate(errors, tests), None)


def _json(text: str, file: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from None


def parse_json_report(text: str, file: str = "json") -> Measurement:
    data = _json(text, file)
    try:
        if isinstance(data, Mapping) and isinstance(data.get("summary"), Mapping):
            summary = data["summary"]
            total = int(_number(summary.get("total", summary.get("collected", 0)), "summary.total"))
            errors = int(_number(summary.get("failed", 0), "summary.failed") + _number(summary.get("error", 0), "summary.error"))
            if total == 0:
                raise ArtifactError(f"{file}: the JSON report holds no tests")
            return Measurement("json", file, total, errors, _rate(errors, total), None)
        if isinstance(data, Mapping) and "requests" in data and "errors" in data:
            total = int(_number(data["requests"], "requests"))
            errors = int(_number(data["errors"], "errors"))
            p95 = _number(data["p95_ms"], "p95_ms") if data.get("p95_ms") is not None else None
            if total == 0:
                raise ArtifactError(f"{file}: the JSON report counts no requests")
            return Measurement("json", file, total, errors, _rate(errors, total), p95)
    except ValueError as exc:
        raise ArtifactError(f"{file}: {exc}") from None
    raise ArtifactError(f"{file}: JSON is neither a pytest-json-report (summary) nor {{requests, errors, p95_ms}}")


def parse_k6(text: str, file: str = "k6") -> Measurement:
    data = _json(text, file)
    metrics = data.get("metrics") if isinstance(data, Mapping) else None
    if not isinstance(metrics, Mapping):
        raise ArtifactError(f"{file}: no 'metrics' object; not a k6 summary")

    def metric(name: str, key: str) -> Any:
        raw = metrics.get(name)
        if not isinstance(raw, Mapping):
            return None
        values = raw.get("values") if isinstance(raw.get("values"), Mapping) else raw
        return values.get(key)

    failed, p95, count = metric("http_req_failed", "rate"), metric("http_req_duration", "p(95)"), metric("http_reqs", "count")
    if failed is None or p95 is None:
        raise ArtifactError(f"{file}: k6 summary lacks http_req_failed rate or http_req_duration p(95)")
    try:
        rate, p95_ms = _number(failed, "http_req_failed.rate"), _number(p95, "http_req_duration.p(95)")
        requests = int(_number(count, "http_reqs.count")) if count is not None else None
    except ValueError as exc:
        raise ArtifactError(f"{file}: {exc}") from None
    errors = round(rate * requests) if requests is not None else None
    return Measurement("k6", file, requests, errors, rate, p95_ms)


def parse_locust(text: str, file: str = "locust") -> Measurement:
    rows = list(csv.DictReader(io.StringIO(text)))
    row = next((r for r in rows if (r.get("Name") or "").strip() == "Aggregated"), None)
    if row is None:
        raise ArtifactError(f"{file}: no 'Aggregated' row; not a Locust stats CSV")

    def column(*names: str) -> str:
        for name in names:
            if row.get(name) not in (None, ""):
                return row[name].strip()
        raise ArtifactError(f"{file}: the Aggregated row has no {names[0]!r} column")

    try:
        requests = int(column("Request Count", "# requests"))
        errors = int(column("Failure Count", "# failures"))
        p95_text = column("95%")
    except ValueError:
        raise ArtifactError(f"{file}: the Aggregated row has non-numeric counts") from None
    try:
        p95 = float(p95_text) if p95_text.upper() != "N/A" else None
    except ValueError:
        raise ArtifactError(f"{file}: the Aggregated 95% value {p95_text!r} is not a number") from None
    if requests == 0:
        raise ArtifactError(f"{file}: Locust counted no requests")
    return Measurement("locust", file, requests, errors, _rate(errors, requests), p95)


PARSERS: dict[str, Callable[[str, str], Measurement]] = {
    "junit": parse_junit,
    "json": parse_json_report,
    "k6": parse_k6,
    "locust": parse_locust,
}


def read_artifact(kind: str, path: str | Path) -> Measurement:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {kind} artifact is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {kind} artifact is unreadable ({type(exc).__name__})") from None
    return PARSERS[kind](text, str(path))


def judge(
    measurements: list[Measurement], problems: list[str], max_error_rate: float, max_p95_ms: float
) -> dict[str, Any]:
    """The verdict from what was read (``measurements``) and what could not be (``problems``)."""
    reasons = list(problems)
    if not measurements and not problems:
        reasons.append("no artifact was given")
    error_rate = max((m.error_rate for m in measurements), default=None)
    p95s = [m.p95_ms for m in measurements if m.p95_ms is not None]
    p95 = max(p95s) if p95s else None
    if error_rate is not None and error_rate >= max_error_rate:
        worst = max(measurements, key=lambda m: m.error_rate)
        reasons.append(f"error rate {error_rate:.2%} >= {max_error_rate:.2%} (from {worst.file})")
    if measurements and p95 is None:
        reasons.append("no artifact reports a P95 latency")
    elif p95 is not None and p95 >= max_p95_ms:
        worst = max((m for m in measurements if m.p95_ms is not None), key=lambda m: m.p95_ms)
        reasons.append(f"P95 {p95:.0f} ms >= {max_p95_ms:.0f} ms (from {worst.file})")
    return {
        "passed": not reasons,
        "error_rate": None if error_rate is None else round(error_rate, 6),
        "p95_ms": p95,
        "max_error_rate": max_error_rate,
        "max_p95_ms": max_p95_ms,
        "reasons": reasons,
        "sources": [asdict(m) for m in measurements],
    }


def evaluate(artifacts: Mapping[str, str | Path | None], max_error_rate: float, max_p95_ms: float) -> dict[str, Any]:
    """Read every given artifact (kind -> path) and judge them together."""
    measurements, problems = [], []
    for kind, path in artifacts.items():
        if path is None:
            continue
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
        parser.add_argument(f"--{kind}", metavar="FILE", help=f"{kind} artifact")
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
