"""The gate split by concern: a small ``decide()`` routes each event type through one table to
its handler module, each short enough to read in one sitting; and the precedence of outcomes,
written once in shared/domain/gate.py's docstring, holds when several apply to one event."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from shared.domain import gate
from shared.domain.events import Event, Outcome, StageFinished
from shared.domain.gate import GateOutcome, decide
from shared.domain.state import ReleaseStatus
from tests.unit import gate_helpers as h

DOMAIN = Path(gate.__file__).parent
MAX_HANDLER_MODULE_LINES = 200


def test_every_gate_module_is_at_most_200_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in sorted(DOMAIN.glob("gate*.py"))}
    assert len(sizes) >= 8, sizes  # gate.py, gate_run.py and one module per concern
    assert {name: n for name, n in sizes.items() if n > MAX_HANDLER_MODULE_LINES} == {}


def test_every_event_type_has_its_handler_in_the_table():
    assert set(gate.HANDLERS) == set(typing.get_args(Event))
    assert all(handler.__module__.startswith("shared.domain.gate_") for handler in gate.HANDLERS.values())


# -- precedence: DUPLICATE > TERMINAL > REFUSED (other definition) > UNKNOWN_STAGE > STALE > REFUSED > IGNORED --
def _terminal_state():
    state = h.fresh_state()
    return dataclasses.replace(state, status=ReleaseStatus.SUCCEEDED)


def test_a_duplicate_wins_over_a_terminal_release():
    state = _terminal_state()
    event = h.started(state.release_id)
    state.applied_events.append(event.id)
    assert decide(h.PIPELINE, state, event, h.T0).outcome is GateOutcome.DUPLICATE


def test_a_terminal_release_wins_over_an_unknown_stage_and_another_definition():
    state = dataclasses.replace(_terminal_state(), pipeline_digest="another")
    event = StageFinished(h.eid(), state.release_id, "no-such-stage", "x", Outcome.SUCCEEDED, "", {})
    assert decide(h.PIPELINE, state, event, h.T0).outcome is GateOutcome.TERMINAL


def test_another_definition_wins_over_an_unknown_stage():
    state = dataclasses.replace(h.fresh_state(), pipeline_digest="another")
    event = StageFinished(h.eid(), state.release_id, "no-such-stage", "x", Outcome.SUCCEEDED, "", {})
    assert decide(h.PIPELINE, state, event, h.T0).outcome is GateOutcome.REFUSED


def test_an_unknown_stage_wins_over_a_stale_run():
    state = h.run_to("unit")
    event = StageFinished(h.eid(), state.release_id, "no-such-stage", "not-the-run", Outcome.SUCCEEDED, "", {})
    assert decide(h.PIPELINE, state, event, h.T0).outcome is GateOutcome.UNKNOWN_STAGE


def test_a_stale_run_wins_over_a_refusal():
    """A finish for the approval stage is refused, unless it is not even the current run: stale."""
    state = h.run_to("approval")
    event = StageFinished(h.eid(), state.release_id, "approval", "not-the-run", Outcome.SUCCEEDED, "", {})
    assert decide(h.PIPELINE, state, event, h.T0).outcome is GateOutcome.STALE
