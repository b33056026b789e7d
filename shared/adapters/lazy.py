"""The one laziness mechanism of the wiring: a stand-in built on first use.

A function pays every import and client construction of its path on each cold start
(tests/unit/test_cold_start_imports.py), so the composition root (shared/bootstrap.py) and the
executors' package hand out ``Lazy(factory)`` for what a path may never touch: a Google client,
an executor and its module, the notifiers, the store of a probe that only GETs. The factory runs
when an attribute or item of the stand-in is first used; after that the stand-in forwards to
what it built.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


class Lazy:
    __slots__ = ("_factory", "_built", "_lock")

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._built: Any = None
        self._lock = threading.Lock()

    def _target(self) -> Any:
        if self._built is None:
            with self._lock:  # the dispatcher's threads may reach it at once: build once
                if self._built is None:
                    self._built = self._factory()
        return self._built

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._target()[key]

    def __repr__(self) -> str:
        return f"Lazy({self._built!r})" if self._built is not None else f"Lazy(unbuilt {self._factory!r})"
