"""Local processes that stand in for build steps, job tasks and served revisions.

Every process runs in its own session so that stopping it ends its children too,
and the supervisor remembers each one so StandIn.stop() leaves nothing behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TAIL_CHARS = 1500


@dataclass
class ProcessResult:
    exit_code: int
    tail: str
    timed_out: bool = False
    cancelled: bool = False


class Supervisor:
    """Starts processes and ends exactly the ones it started."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def spawn(self, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
            timeout_s: float | None, cancel: threading.Event) -> ProcessResult:
        """Run to completion, or until the timeout or the cancel event; returns exit code and output tail."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start_offset = log_path.stat().st_size if log_path.exists() else 0
        try:
            proc = self.spawn(argv, cwd=cwd, env=env, log_path=log_path)
        except OSError as exc:  # missing executable or bad cwd: what a shell would call 127
            with log_path.open("a") as log:
                log.write(f"cannot start {argv[:1]}: {exc}\n")
            return ProcessResult(127, str(exc))
        deadline = time.monotonic() + timeout_s if timeout_s else None
        timed_out = cancelled = False
        while proc.poll() is None:
            if cancel.is_set():
                cancelled = True
                self.end(proc)
                break
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                self.end(proc)
                break
            time.sleep(0.05)
        with log_path.open("rb") as log:
            log.seek(start_offset)
            tail = log.read().decode("utf-8", "replace")[-TAIL_CHARS:]
        return ProcessResult(proc.returncode if proc.returncode is not None else -1, tail, timed_out, cancelled)

    def end(self, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            self.end(proc)


def wait_answering(port: int, proc: subprocess.Popen, timeout_s: float) -> bool:
    """True once the process answers any HTTP request on the port (any status counts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.05)
    return False


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The stand-in's own environment (PATH, venv) plus what the resource sets."""
    env = dict(os.environ)
    env.update(extra)
    return env
