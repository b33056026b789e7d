"""Test-runner reports as the runners write them: JUnit XML and pytest-json-report.

JUnit XML dialects read here, each as its tool writes it:
* pytest ``--junitxml``: ``<testsuites><testsuite tests= failures= errors= skipped=>`` with
  ``<testcase>`` children holding ``<failure>``, ``<error>`` or ``<skipped>`` (xfail is skipped).
* Node ``node --test --test-reporter=junit``: ``<testcase>`` directly under ``<testsuites>`` for
  top-level tests, ``describe`` blocks as nested ``<testsuite>`` whose ``tests`` counts its direct
  children (test cases and nested suites).
* pytest-rerunfailures (``--reruns N``) adds one ``<testcase>`` per attempt, same classname and
  name, the final one last: a test is counted once, by its last attempt (``tests`` counts tests).
* Maven Surefire and others: ``tests`` counts every case below; re-runs are ``<rerunFailure>`` /
  ``<flakyFailure>`` children: a case with only flaky ones passed on a re-run, one with a
  ``<failure>`` failed every run.
The cases are counted, not the suites' totals (``<testsuites>`` may repeat them); the totals a suite
declares must match its cases, so a corrupted count fails the report instead of being believed.

pytest-json-report (``--json-report``): ``summary`` counts outcomes (passed, failed, error, skipped,
xfailed, xpassed, and ``rerun`` for a test pytest-rerunfailures passed on a re-run) that must add up
to ``total`` and, when the report lists ``tests``, match their outcomes. A plain ``{"requests", "errors", "p95_ms"}`` object
is read as the request counts of a custom load script.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from typing import Any, Mapping

from shared.domain.chaos_report import ArtifactError, Measurement, count, measurement, number, text_count

FAILED = ("failure", "error")
# "rerun": pytest-rerunfailures' flaky test, failed first and then passed (one that failed every
# attempt is "failed"); it counts towards total like any outcome.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "rerun")
PYTEST_INCOMPLETE = {2: "interrupted", 3: "an internal error", 4: "a usage error"}


def _case_outcome(case: ElementTree.Element) -> str:
    children = {child.tag for child in case}
    if children & set(FAILED):
        return "failed"
    if "skipped" in children:
        return "skipped"
    return "passed"


def _declared(suite: ElementTree.Element, name: str, file: str) -> int | None:
    raw = suite.get(name)
    return None if raw is None else text_count(raw, file, f"<{suite.tag} name={suite.get('name')!r}> {name}")


def _final_cases(suite: ElementTree.Element) -> list[ElementTree.Element]:
    """A suite's cases, one per test: pytest-rerunfailures writes every attempt as its own
    ``<testcase>`` with the same classname and name, the last attempt's outcome last."""
    final: dict[tuple[str | None, str | None], ElementTree.Element] = {}
    for case in suite.findall("testcase"):
        final[(case.get("classname"), case.get("name"))] = case
    return list(final.values())


def _check_suite(suite: ElementTree.Element, file: str) -> None:
    cases = _final_cases(suite)
    nested = suite.findall("testsuite")
    below = [case for inner in suite.iter() if inner.tag in ("testsuite", "testsuites") for case in _final_cases(inner)]
    where = f"<{suite.tag} name={suite.get('name')!r}>"
    tests = _declared(suite, "tests", file)
    if tests is not None and tests not in {len(below), len(cases) + len(nested)}:
        raise ArtifactError(f"{file}: {where} declares {tests} tests but holds {len(below)}")
    if nested or suite.tag == "testsuites":
        return
    for name, actual in (("failures", sum(c.find("failure") is not None for c in cases)),
                         ("errors", sum(c.find("error") is not None for c in cases)),
                         ("skipped", sum(c.find("skipped") is not None for c in cases))):
        declared = _declared(suite, name, file)
        if declared is not None and declared != actual:
            raise ArtifactError(f"{file}: {where} declares {declared} {name} but holds {actual}")


def parse_junit(text: str, file: str = "junit") -> Measurement:
    if not text.strip():
        raise ArtifactError(f"{file}: the JUnit report is empty")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ArtifactError(f"{file}: not valid JUnit XML ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ArtifactError(f"{file}: root element is <{root.tag}>, expected <testsuites> or <testsuite>")
    suites = [root, *root.iter("testsuite")]
    cases = [case for suite in suites for case in _final_cases(suite)]
    if not cases:  # totals without cases cannot be checked against anything
        raise ArtifactError(f"{file}: the JUnit report holds no <testcase>")
    for suite in suites:
        _check_suite(suite, file)
    outcomes = [_case_outcome(case) for case in cases]
    executed = len(outcomes) - outcomes.count("skipped")
    return measurement("junit", "JUnit XML", file, executed, outcomes.count("failed"), None,
                       unit="executed tests")


def parse_json_report(text: str, file: str = "json") -> Measurement:
    if not text.strip():
        raise ArtifactError(f"{file}: the JSON report is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from None
    if isinstance(data, Mapping) and isinstance(data.get("summary"), Mapping):
        return _pytest_json_report(data, file)
    if isinstance(data, Mapping) and "requests" in data and "errors" in data:
        requests = count(data["requests"], file, "requests")
        errors = count(data["errors"], file, "errors")
        p95 = number(data["p95_ms"], file, "p95_ms") if data.get("p95_ms") is not None else None
        return measurement("json", "JSON request counts", file, requests, errors, p95)
    raise ArtifactError(f"{file}: JSON is neither a pytest-json-report (summary) nor {{requests, errors, p95_ms}}")


def _pytest_json_report(data: Mapping[str, Any], file: str) -> Measurement:
    summary = data["summary"]
    exitcode = data.get("exitcode")
    if isinstance(exitcode, int) and exitcode in PYTEST_INCOMPLETE:
        raise ArtifactError(f"{file}: pytest stopped with exit code {exitcode} ({PYTEST_INCOMPLETE[exitcode]}); "
                            "the report is incomplete")
    outcomes = {key: count(summary.get(key, 0), file, f"summary.{key}") for key in OUTCOMES}
    total = count(summary.get("total"), file, "summary.total")
    if sum(outcomes.values()) != total:
        raise ArtifactError(f"{file}: summary outcomes add up to {sum(outcomes.values())}, not summary.total {total}")
    tests = data.get("tests")
    if isinstance(tests, list):
        listed = {key: sum(1 for t in tests if isinstance(t, Mapping) and t.get("outcome") == key) for key in OUTCOMES}
        if listed != outcomes or len(tests) != total:
            raise ArtifactError(f"{file}: the summary's outcomes {outcomes} contradict the {len(tests)} tests listed")
    executed = total - outcomes["skipped"]
    return measurement("json", "pytest-json-report", file, executed, outcomes["failed"] + outcomes["error"], None,
                       unit="executed tests")
