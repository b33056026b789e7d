"""Pure rules for Cloud Run revisions: label values, revision names and traffic splits.

No client here: run_services.py reads the service, asks these functions what the
new template and traffic should be, and writes the answer.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable

LABEL_MAX = 63
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
SHORT_SHA = 7  # the same length the release tag uses (v1.2.3-abc1234)


def label_value(value: str) -> str:
    """A Cloud Run label value: lower-case letters, digits, '-' and '_', at most 63 chars.
    ``1.2.3`` -> ``1-2-3``; ``1.2.3+Build.7`` -> ``1-2-3-build-7``."""
    return _LABEL_BAD.sub("-", str(value).lower())[:LABEL_MAX]


def release_labels(version: str, commit: str) -> dict[str, str]:
    """The labels every revision of a release carries, for tracing it back to its tag."""
    return {"version": label_value(version), "commit": label_value(commit[:SHORT_SHA])}


def revision_name(service: str, stage_run_id: str) -> str:
    """Deterministic per service and stage run, so a repeated deploy finds its revision.

    Cloud Run wants ``<service>-<suffix>``, lower case, at most 63 characters; the
    suffix is a digest because a stage-run id is longer than the room left.
    """
    digest = hashlib.sha256(f"{service}\n{stage_run_id}".encode()).hexdigest()[:10]
    name = f"{service}-{digest}"
    if len(name) > LABEL_MAX:
        raise ValueError(f"service name {service!r} is too long for a revision name")
    return name


@dataclass(frozen=True)
class Split:
    """One traffic target: a pinned revision (short name), its percent and optional tag."""

    revision: str
    percent: int
    tag: str = ""


def short_revision(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def current_split(service: Any) -> list[Split]:
    """What the service serves now: its traffic statuses, else its traffic spec.
    A LATEST target is resolved to the latest ready revision."""
    latest = short_revision(getattr(service, "latest_ready_revision", "") or "")
    targets = list(getattr(service, "traffic_statuses", None) or []) or list(getattr(service, "traffic", None) or [])
    split = []
    for target in targets:
        revision = short_revision(target.revision)
        if not revision and int(getattr(target.type_, "value", target.type_) or 0) == 1:  # LATEST
            revision = latest
        if revision:
            split.append(Split(revision, int(target.percent), target.tag or ""))
    return split


def serving_most(split: Iterable[Split], exclude: str = "") -> str:
    """The revision that had the largest share (the first of equals); '' when none."""
    best, best_percent = "", 0
    for target in split:
        if target.revision != exclude and target.percent > best_percent:
            best, best_percent = target.revision, target.percent
    return best


def plan_split(current: Iterable[Split], new_revision: str, percent: int, tag: str = "") -> list[Split]:
    """Traffic after putting ``percent`` on ``new_revision`` (tagged ``tag``).

    100 % moves everything. Less keeps the rest on the revision that served most
    before (keeping its own tag unless it is the one moving). With nothing serving
    before (a first deploy) the new revision takes everything: there is no one to share with.
    """
    current = list(current)
    previous = serving_most(current, exclude=new_revision)
    if percent >= 100 or not previous:
        return [Split(new_revision, 100, tag)]
    previous_tag = next((t.tag for t in current if t.revision == previous and t.tag and t.tag != tag), "")
    return [Split(new_revision, percent, tag), Split(previous, 100 - percent, previous_tag)]


def split_reached(current: Iterable[Split], wanted: Iterable[Split]) -> bool:
    """True when every wanted revision serves its percent (tags not compared: a status may omit them)."""
    served: dict[str, int] = {}
    for target in current:
        served[target.revision] = served.get(target.revision, 0) + target.percent
    return all(served.get(w.revision, 0) == w.percent for w in wanted)


def to_traffic_targets(split: Iterable[Split]) -> list[Any]:
    from google.cloud import run_v2

    pinned = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    return [run_v2.TrafficTarget(type_=pinned, revision=s.revision, percent=s.percent, tag=s.tag) for s in split]
