"""Faults 1 and 2: the dispatcher process is killed (SIGKILL) in the middle of an event.

A real subprocess (tests/faults/dispatcher_runner.py) runs the real Dispatcher over the
Firestore emulator and the real CloudBuildExecutor against the stand-in; it is killed
at a marker line. The event is then redelivered to a dispatcher in this process, as
Pub/Sub would after the dead instance never acknowledged it.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from shared.app.config import REPO_ROOT
from shared.domain.errors import TransientError
from shared.testing.fakes import FakeClock
from shared.domain.gate import GateOutcome
from shared.domain.state import StageStatus
from tests.faults import rig

pytestmark = pytest.mark.emulators


@pytest.fixture
def env(emulators, unique_prefix, standin):
    settings = rig.settings_for(emulators["project"], unique_prefix, standin.endpoint)
    store = rig.firestore_store(emulators["project"], settings)
    return settings, store


def run_and_kill(emulators, settings, event_id: str, payload: bytes, stop_at: str) -> str:
    """Start the runner, wait for its marker line, SIGKILL it; return the marker line."""
    args = [sys.executable, "-m", "tests.faults.dispatcher_runner", "--project", emulators["project"],
            "--prefix", settings.collection_prefix, "--endpoint", settings.cloud_build_endpoint,
            "--event-id", event_id, "--payload", payload.decode(), "--stop-at", stop_at]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FIRESTORE_EMULATOR_HOST": emulators["firestore"]}
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.rstrip())
                if line.startswith("MARK "):
                    proc.send_signal(signal.SIGKILL)
                    assert proc.wait(10) == -signal.SIGKILL
                    return line.strip()
            elif proc.poll() is not None:
                break
        raise AssertionError("the runner never reached its stop point:\n" + "\n".join(lines[-40:]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def start_first_stage(settings, store, standin) -> str:
    """A release whose stage s1 runs (one build on the stand-in)."""
    rid = rig.create_release(store)
    live = rig.dispatcher(store, {"build": rig.build_executor(settings)}, settings)
    lookups = standin.api_calls["ListBuilds"]
    assert live.handle_message(f"{rid}-start", {}, rig.started(rid)).outcome is GateOutcome.APPLIED
    assert len(rig.builds_for(standin, f"{rid}.s1.a1")) == 1
    # The handler that wrote the batch made the run id: no build can carry it yet, so no lookup.
    assert standin.api_calls["ListBuilds"] == lookups
    return rid


@pytest.mark.parametrize("stop_at", ["after-write", "after-start"])
def test_killed_between_state_write_and_side_effect_starts_exactly_one_build(env, emulators, standin, stop_at):
    """Fault: the dispatcher dies right after the conditional write that records s1's success,
    s2 running and the outbox batch "start s2" - before creating s2's build (after-write), or
    after creating it but before removing the batch (after-start).
    Expected: no state is lost (the write survived: s1 succeeded, s2 running, batch kept);
    a redelivery before the batch's lease expires starts nothing and is not acknowledged
    (it waits 2 s, then raises TransientError so Pub/Sub retries); the redelivery after the
    lease carries the batch out, and the stand-in holds exactly one build for s2's stage-run
    id (created then, or found by its run- tag); further redeliveries change nothing."""
    settings, store = env
    rid = start_first_stage(settings, store, standin)
    s2 = f"{rid}.s2.a1"
    marker = run_and_kill(emulators, settings, f"{rid}-s1-done", rig.finished(rid, "s1"), stop_at)
    assert marker.startswith(f"MARK {stop_at} {s2}")

    state = store.get(rid)[0]
    assert state.stages["s1"].status is StageStatus.SUCCEEDED and state.stages["s1"].result["from"] == "completion"
    assert state.stages["s2"].status is StageStatus.RUNNING and state.stages["s2"].stage_run_id == s2
    assert [b["event_id"] for b in state.outbox] == [f"{rid}-s1-done"]
    assert len(rig.builds_for(standin, s2)) == (1 if stop_at == "after-start" else 0)

    executor = rig.build_executor(settings)
    early = rig.dispatcher(store, {"build": executor}, settings)  # real clock: the lease still holds
    with pytest.raises(TransientError, match="still in flight"):
        early.handle_message(f"{rid}-s1-done", {}, rig.finished(rid, "s1"))
    assert len(rig.builds_for(standin, s2)) == (1 if stop_at == "after-start" else 0)

    later = FakeClock(time.time() + settings.outbox_lease_s + 1)
    redelivery = rig.dispatcher(store, {"build": executor}, settings, clock=later)
    lookups = standin.api_calls["ListBuilds"]
    decision = redelivery.handle_message(f"{rid}-s1-done", {}, rig.finished(rid, "s1"))
    assert standin.api_calls["ListBuilds"] == lookups + 1, "the recovered start looked for the dead one's build"
    assert decision.outcome is GateOutcome.DUPLICATE  # the transition itself happened once, before the kill
    builds = rig.builds_for(standin, s2)
    assert len(builds) == 1, f"{len(builds)} builds for {s2}"
    state = store.get(rid)[0]
    assert state.outbox == []
    assert state.stages["s2"].result["build_id"] == builds[0].id
    assert state.stages["s2"].result.get("reused", False) is (stop_at == "after-start")
    assert state.applied_events.count(f"{rid}-s1-done") == 1

    redelivery.handle_message(f"{rid}-s1-done", {}, rig.finished(rid, "s1"))
    assert len(rig.builds_for(standin, s2)) == 1
    assert len(rig.builds_for(standin, f"{rid}.s1.a1")) == 1


def test_killed_before_the_state_write_the_redelivery_makes_the_transition_once(env, emulators, standin):
    """Fault: the dispatcher dies after reading and deciding, just before its conditional write.
    Expected: nothing was written (s1 still running, no outbox, event not applied) and no
    build was started; the redelivered event (same id) makes the transition exactly once:
    s1 succeeded, one build for s2, the batch removed; another redelivery is a duplicate."""
    settings, store = env
    rid = start_first_stage(settings, store, standin)
    before = store.get(rid)[0]
    marker = run_and_kill(emulators, settings, f"{rid}-s1-done", rig.finished(rid, "s1"), "before-write")
    assert marker == f"MARK before-write {rid}"

    after_kill = store.get(rid)[0]
    assert after_kill.to_dict() == before.to_dict(), "the killed instance wrote nothing"
    assert rig.builds_for(standin, f"{rid}.s2.a1") == []

    redelivery = rig.dispatcher(store, {"build": rig.build_executor(settings)}, settings)
    assert redelivery.handle_message(f"{rid}-s1-done", {}, rig.finished(rid, "s1")).outcome is GateOutcome.APPLIED
    assert redelivery.handle_message(f"{rid}-s1-done", {}, rig.finished(rid, "s1")).outcome is GateOutcome.DUPLICATE
    state = store.get(rid)[0]
    assert state.stages["s1"].status is StageStatus.SUCCEEDED
    assert state.stages["s2"].status is StageStatus.RUNNING and state.stages["s2"].attempt == 1
    assert state.outbox == [] and state.applied_events.count(f"{rid}-s1-done") == 1
    assert len(rig.builds_for(standin, f"{rid}.s2.a1")) == 1
