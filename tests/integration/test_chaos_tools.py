"""The chaos gate on reports the installed tools write now: Locust headless, pytest --junitxml and
pytest-json-report, Node's JUnit reporter, each run against the sample app on loopback, healthy and
with every 10th `/` answering 500. (The unit tests pin the numbers of checked-in runs of the same
tools; this keeps the parsers honest against the versions requirements-dev.txt installs.)"""
from __future__ import annotations

import shutil

import pytest

from local import chaos_tools
from shared.domain import chaos

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (Node's JUnit reporter)")


@pytest.fixture(scope="module", params=["healthy", "faulty"])
def run(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    env = {"WORK_MS": "5"} if request.param == "healthy" else {"WORK_MS": "5", "CANARY_FAULTS": "5xx=0.1"}
    with chaos_tools.served_sample_app(env) as base:
        locust = chaos_tools.run_locust(base, folder / "locust", users=4, seconds=5)
        chaos_tools.run_pytest(base, folder / "junit.xml", folder / "report.json")
        chaos_tools.run_node(base, folder / "node.xml")
    reports = {"locust": [locust["stats"], locust["json"]], "junit": [folder / "junit.xml", folder / "node.xml"],
               "json": [folder / "report.json"]}
    return request.param, reports


def test_every_report_of_a_real_run_is_read_and_judged(run):
    health, reports = run
    verdict = chaos.evaluate(reports, 0.05, 800)
    assert len(verdict["sources"]) == 5, verdict["reasons"]
    by_file = {source["file"]: source for source in verdict["sources"]}
    stats, json_out = (by_file[str(path)] for path in reports["locust"])
    assert stats["requests"] > 50 and json_out["requests"] >= stats["requests"]  # the CSV is written on an interval
    assert by_file[str(reports["junit"][0])]["requests"] == 22  # 23 pytest tests, one skipped (no TLS)
    assert by_file[str(reports["junit"][1])]["requests"] == 12  # 13 Node tests, one skipped
    if health == "healthy":
        assert verdict["passed"], verdict["reasons"]
        assert all(source["errors"] == 0 for source in verdict["sources"])
    else:
        # Two of three requests hit `/`, every 10th of those fails: about 6.7 % of Locust's requests.
        assert not verdict["passed"]
        assert 0.05 < json_out["error_rate"] < 0.09
        worst = max(verdict["sources"], key=lambda source: source["error_rate"])
        assert verdict["error_rate"] == round(worst["error_rate"], 6)
        assert verdict["decided_by"]["error_rate"] == f"{worst['file']} ({worst['dialect']})"


def test_locusts_failures_file_agrees_with_its_stats(run):
    _, reports = run
    stats = reports["locust"][0]
    assert stats.with_name("locust_failures.csv").exists()
    chaos.read_artifact("locust", stats)  # raises if the failures file counts other failures


def test_the_sample_pipelines_chaos_steps_judge_what_the_tools_wrote(tmp_path):
    """pipelines/sample.yaml stage 10a: `sample_ci chaos` loads the pushed image with the tools,
    `sample_ci chaos-verdict` judges their reports and returns the verdict as step output."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SAMPLE_STACK_DIR": str(tmp_path / "stack"), "BUILDER_OUTPUT": str(tmp_path / "out")}
    (tmp_path / "stack" / "registry").mkdir(parents=True)
    (tmp_path / "stack" / "registry" / "credentials").write_text("token")

    def step(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "local.sample_ci", *args], cwd=chaos_tools.ROOT, env=env,
                              capture_output=True, text=True, timeout=180)

    for command in ("build", "push", "chaos"):
        assert step(command, "--tag", "v9.9.9").returncode == 0
    verdict_step = step("chaos-verdict", "--tag", "v9.9.9")
    verdict = json.loads((tmp_path / "out" / "output").read_text())
    assert verdict_step.returncode == 0, verdict["reasons"]
    assert {s["dialect"] for s in verdict["sources"]} == {"JUnit XML", "pytest-json-report", "Locust stats CSV",
                                                          "Locust --json"}
    assert len(verdict["sources"]) == 5  # pytest's and Node's JUnit, pytest-json-report, Locust's CSV and --json
    assert verdict["passed"]
    assert verdict["decided_by"]["p95_ms"].endswith(("(Locust --json)", "(Locust stats CSV)"))
