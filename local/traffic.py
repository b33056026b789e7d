"""Measure which revision answers a service URL, over time, with real HTTP requests.

The split between the prod deploy (10 %) and the last stage (100 %) lasts only as
long as the prod smoke takes, so the sampler runs in the background and keeps a
timestamp with each answer; the share is then computed for any time window.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request


class TrafficSampler:
    def __init__(self, url: str, threads: int = 4):
        self.url = url.rstrip("/") + "/"
        self.samples: list[tuple[float, str]] = []  # (epoch seconds, version answered)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "TrafficSampler":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    version = json.loads(response.read()).get("version", "?")
            except (OSError, ValueError):
                version = "error"
            with self._lock:
                self.samples.append((time.time(), version))

    def share(self, version: str, start: float, end: float) -> tuple[float, int]:
        """Fraction of answers from ``version`` between two epoch times, and the sample count."""
        with self._lock:
            window = [v for t, v in self.samples if start <= t <= end]
        if not window:
            return 0.0, 0
        return sum(1 for v in window if v == version) / len(window), len(window)


def sample_share(url: str, version: str, requests: int = 200) -> float:
    """Answers from ``version`` among ``requests`` sequential requests."""
    hits = 0
    for _ in range(requests):
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=5) as response:
            hits += json.loads(response.read()).get("version") == version
    return hits / requests
