"""What every chaos report parser shares: the measurement it yields, the error it raises, and the
checks that turn a truncated, mis-shaped or self-contradictory report into a named failure.

A parser never guesses: a number that is missing, not finite, negative, or disagrees with another
number of the same report fails the report with a message naming the file and the problem, because a
cut or corrupted report can otherwise read as a healthy one (a Locust row cut inside ``95%`` read
"9" for 910 ms). Standard library only: the release-tools image runs this (deploy/release-tools/).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from shared.domain.errors import PipelineError


class ArtifactError(PipelineError):
    """A report is missing, unreadable, mis-shaped or contradicts itself; the message names the file."""


@dataclass(frozen=True)
class Measurement:
    """One report's reading. ``requests``/``errors`` count what the report counts (HTTP requests or
    executed tests); ``p95_ms`` only when the report measures request latency."""

    kind: str
    file: str
    requests: int | None
    errors: int | None
    error_rate: float
    p95_ms: float | None
    dialect: str = ""


def measurement(kind: str, dialect: str, file: str, requests: int, errors: int, p95_ms: float | None,
                unit: str = "requests") -> Measurement:
    """A measurement from counts, refusing counts no real report holds."""
    if requests <= 0:
        raise ArtifactError(f"{file}: the {dialect} counts no {unit}")
    if errors > requests:
        raise ArtifactError(f"{file}: {errors} failures out of {requests} do not add up")
    return Measurement(kind, file, requests, errors, errors / requests, p95_ms, dialect)


def number(value: Any, file: str, what: str) -> float:
    """A finite, non-negative number from a JSON value; anything else names the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArtifactError(f"{file}: {what} is {'missing' if value is None else f'not a number: {value!r}'}")
    if not math.isfinite(value) or value < 0:
        raise ArtifactError(f"{file}: {what} is {value!r}, not a finite non-negative number")
    return float(value)


def count(value: Any, file: str, what: str) -> int:
    """A whole, non-negative count (JSON writers may write 3 as 3.0)."""
    as_float = number(value, file, what)
    if not as_float.is_integer():
        raise ArtifactError(f"{file}: {what} is {value!r}, not a whole count")
    return int(as_float)


def text_number(text: str | None, file: str, what: str) -> float:
    """A finite, non-negative number from a CSV cell or XML attribute."""
    if text is None or not text.strip():
        raise ArtifactError(f"{file}: {what} is missing")
    try:
        value = float(text)
    except ValueError:
        raise ArtifactError(f"{file}: {what} is not a number: {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ArtifactError(f"{file}: {what} is {text[:40]!r}, not a finite non-negative number")
    return value


def text_count(text: str | None, file: str, what: str) -> int:
    value = text_number(text, file, what)
    if not value.is_integer():
        raise ArtifactError(f"{file}: {what} is {text!r}, not a whole count")
    return int(value)


def check_percentiles(ordered: Iterable[tuple[str, float | None]], file: str, where: str) -> None:
    """Latency statistics must not fall as the percentile rises (min <= median <= p90 <= p95 <= max);
    a P95 below the median is a cut or corrupted value, not a measurement."""
    previous: tuple[str, float] | None = None
    for name, value in ordered:
        if value is None:
            continue
        if previous is not None and value < previous[1]:
            raise ArtifactError(f"{file}: {where} {name} {value:g} is below {previous[0]} {previous[1]:g}")
        previous = (name, value)


def check_rate(rate: float, errors: int, requests: int, file: str, what: str) -> None:
    """A reported rate must be the ratio of the reported counts (to the precision writers round to)."""
    if rate > 1 or abs(rate - errors / requests) > max(1e-6, 0.5 / requests):
        raise ArtifactError(f"{file}: {what} {rate:g} contradicts {errors} of {requests}")


def mapping(value: Any, file: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ArtifactError(f"{file}: {what} is {'missing' if value is None else 'not an object'}")
    return value
