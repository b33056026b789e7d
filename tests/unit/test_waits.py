"""The tests' release waits (tests/waits.py) end when a release can no longer move, saying what they saw."""
from __future__ import annotations

import re
import time

import pytest

from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.testing.fakes import FakeStore
from tests.unit.gate_helpers import PIPELINE, PUSHER
from tests.waits import wait_for_release


def stored(running_since: float, deadline: float):
    store = FakeStore()
    state = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="a" * 40, version="1.2.3",
                        pushed_by=PUSHER, now=running_since)
    lint = state.stages["lint"]
    lint.status, lint.attempt, lint.started_at, lint.deadline = StageStatus.RUNNING, 1, running_since, deadline
    assert store.create(state)
    return store, state.release_id


def test_a_stage_past_its_timeout_and_the_margin_ends_the_wait_at_once_naming_it():
    now = time.time()
    store, rid = stored(now - 100, deadline=now - 50)
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        wait_for_release(store, rid, lambda s: s.status is ReleaseStatus.SUCCEEDED, "the end", margin_s=1, poll_s=0.01)
    assert time.monotonic() - t0 < 5, "it gave up as soon as the stage was past its deadline + margin"
    assert "gave up waiting for the end" in str(failed.value)
    assert re.search(r"lint: running \(started -10[01]\.\d s, deadline -5[01]\.\d s\)", str(failed.value))


def test_a_stage_within_its_timeout_keeps_the_wait_going_until_the_condition_holds():
    now = time.time()
    store, rid = stored(now, deadline=now + 600)
    polls = []

    def done_on_the_third_look(state):
        polls.append(state.status)
        return len(polls) == 3

    got = wait_for_release(store, rid, done_on_the_third_look, "three looks", margin_s=0, poll_s=0.01)
    assert got.release_id == rid and len(polls) == 3
