"""Start and stop the Firestore and Pub/Sub emulators that ship with google-cloud-cli."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shared.domain.errors import ConfigError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(ready, what: str, timeout_s: float, proc: subprocess.Popen | None, log: Path | None, pause: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise ConfigError(f"process for {what} exited with {proc.returncode}: {tail}")
        try:
            ready()
            return
        except OSError:
            time.sleep(pause)
    raise ConfigError(f"{what} did not answer within {timeout_s:.0f}s")


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers (the emulators answer "Ok" on /)."""
    _wait(lambda: urllib.request.urlopen(url, timeout=1).close(), url, timeout_s, proc, log, 0.2)


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until something accepts TCP connections (functions answer only their own routes)."""
    _wait(lambda: socket.create_connection((host, port), timeout=1).close(), f"{host}:{port}", timeout_s, proc, log, 0.1)


@dataclass
class Emulator:
    name: str
    host: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            # gcloud starts the Java emulator as a child: end the whole process group.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _gcloud() -> str:
    path = shutil.which("gcloud")
    if not path:
        raise ConfigError("gcloud (google-cloud-cli) is not on PATH; it provides the Firestore and Pub/Sub emulators")
    return path


def start_emulator(
    kind: str, project: str, log_dir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()
) -> Emulator:
    """``kind`` is 'firestore' or 'pubsub'. Returns once the emulator answers HTTP.
    ``extra_args`` go to gcloud as they are (e.g. ``--import-data=...``)."""
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    if kind == "firestore":
        args = [_gcloud(), "emulators", "firestore", "start", f"--host-port={host}"]
    elif kind == "pubsub":
        args = [_gcloud(), "beta", "emulators", "pubsub", "start", f"--host-port={host}", f"--project={project}"]
    else:
        raise ValueError(kind)
    args += list(extra_args)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind}-emulator.log"
    proc = subprocess.Popen(
        args, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True, stdin=subprocess.DEVNULL
    )
    emulator = Emulator(kind, host, proc)
    try:
        wait_http(f"http://{host}/", 90, proc, log)
    except BaseException:
        emulator.stop()
        raise
    return emulator
