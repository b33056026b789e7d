"""The gate passes the image digest a build reported on to the stages after it (issue 22)."""
from __future__ import annotations

from shared.domain.commands import StartStage
from shared.domain.events import Outcome, StageFinished
from shared.domain.gate import decide
from tests.unit.gate_helpers import PIPELINE, T0, eid, granted, replay, run_to

DIGEST = "sha256:" + "ab" * 32


def apply(state, event):
    """The decision's new state and the stages it starts, granting a lock it asks for."""
    d = decide(PIPELINE, state, event, T0)
    starts = [c for c in d.commands if isinstance(c, StartStage)]
    while d.state is not None and d.state.status.value == "queued":
        d = decide(PIPELINE, d.state, granted(d.state), T0)
        starts += [c for c in d.commands if isinstance(c, StartStage)]
    return d.state, starts


def succeed(state, stage, result=None):
    run_id = state.stages[stage].stage_run_id
    return apply(state, StageFinished(eid(), state.release_id, stage, run_id, Outcome.SUCCEEDED, "", result or {}))


def test_stages_after_the_build_get_its_digest_and_stages_before_do_not():
    state = run_to("unit")
    state, starts = succeed(state, "unit", {"digest": DIGEST, "images": [{"name": "reg/app:v1", "digest": DIGEST}]})
    assert [(c.stage, c.inputs.get("digest")) for c in starts] == [("staging-migrate", DIGEST)]
    state, starts = succeed(state, "staging-migrate")
    assert [(c.stage, c.inputs.get("digest")) for c in starts] == [("staging-deploy", DIGEST)]


def test_a_stage_before_any_digest_gets_none():
    state = run_to("lint")
    _, starts = succeed(state, "lint")
    assert [c.stage for c in starts] == ["unit"] and "digest" not in starts[0].inputs


def test_a_replay_runs_the_digest_of_the_release_replayed():
    state = run_to("unit")
    state, _ = succeed(state, "unit", {"digest": DIGEST})
    state, _ = succeed(state, "staging-migrate")
    state, _ = succeed(state, "staging-deploy")
    state, _ = succeed(state, "staging-smoke")  # a replay waits until nothing runs
    state, starts = apply(state, replay(state, "staging-migrate"))
    assert [(c.stage, c.inputs["digest"]) for c in starts] == [("staging-migrate", DIGEST)]
