"""The chaos tools run for real against a served sample app: Locust headless, pytest with
``--junitxml`` and pytest-json-report, Node's test runner with its JUnit reporter.

Used by the sample pipeline's chaos step (local/sample_ci.py ``chaos``), by the fixture generator
(tests/unit/data/chaos/generate.py) and by tests/integration/test_chaos_tools.py, so the reports the
gate reads here are the ones these tools write, never files shaped by hand.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHAOS = ROOT / "sample_app" / "chaos"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(base: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(base + "/health/liveliness", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, even if unhealthy
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sample app did not come up at {base}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def served_sample_app(env: dict[str, str] | None = None, cwd: Path = ROOT) -> Iterator[str]:
    """The sample app from ``cwd`` on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sample_app.server"], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "PORT": str(port), **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base)
        yield base
    finally:
        proc.terminate()
        proc.wait(5)


def locust_command() -> list[str]:
    """Locust from the running interpreter's environment (pinned in requirements-dev.txt)."""
    beside = Path(sys.executable).with_name("locust")
    return [str(beside)] if beside.exists() else [shutil.which("locust") or "locust"]


def run_locust(base: str, prefix: Path, users: int = 4, seconds: int = 2) -> dict[str, Path]:
    """``locust --headless --csv PREFIX --json`` against ``base``: the stats and failures CSVs and
    the ``--json`` output (its stdout). Locust exits 1 when a request failed; that is a result."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = prefix.with_name(prefix.name + ".json")
    with json_path.open("w") as out:
        result = subprocess.run(
            [*locust_command(), "-f", str(CHAOS / "locustfile.py"), "--headless", "-u", str(users), "-r", str(users),
             "-t", f"{seconds}s", "-H", base, "--csv", str(prefix), "--json", "--only-summary",
             "--loglevel", "WARNING"],
            stdout=out, stderr=subprocess.PIPE, text=True, timeout=seconds + 60)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"locust exited {result.returncode}: {result.stderr[-2000:]}")
    return {"stats": Path(f"{prefix}_stats.csv"), "failures": Path(f"{prefix}_failures.csv"), "json": json_path}


def run_pytest(base: str, junit: Path, report: Path, extra: tuple[str, ...] = ()) -> int:
    """The sample app's chaos tests with ``--junitxml`` and ``--json-report`` (and ``extra`` options,
    e.g. pytest-rerunfailures' ``--reruns 1``)."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHAOS / "test_smoke.py"),
         f"--junitxml={junit}", "--json-report", f"--json-report-file={report}", "--rootdir", str(CHAOS), *extra],
        env={**os.environ, "CHAOS_BASE_URL": base}, cwd=CHAOS, capture_output=True, timeout=120).returncode


def run_node(base: str, junit: Path) -> int:
    """``node --test --test-reporter=junit`` on the sample app's Node smoke."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["node", "--test", "--test-reporter=junit", f"--test-reporter-destination={junit}",
         str(CHAOS / "smoke.test.mjs")],
        env={**os.environ, "CHAOS_BASE_URL": base}, capture_output=True, timeout=120).returncode
