"""A release in flight survives an upgrade of the code: documents written by the code of
2026-11-30 (before schema versions; tests/unit/data/upgrade/) are read and moved on by
today's code, and a document from newer code is refused, not misread."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.domain.errors import ConfigError
from shared.domain.events import ApprovalDecided
from shared.domain.gate import GateOutcome, decide
from shared.domain.pipeline import PIPELINE_SCHEMA, load_pipeline, pipeline_from_stored, stored_pipeline
from shared.domain.state import RELEASE_SCHEMA, ReleaseState, ReleaseStatus, StageStatus

OLD = json.loads((Path(__file__).parent / "data" / "upgrade" / "release_awaiting_approval_unversioned.json").read_text())
APPROVER = "approver@example.com"


def test_the_fixture_is_what_the_old_code_wrote():
    assert "schema" not in OLD["release"] and "schema" not in OLD["pipeline"]
    assert OLD["release"]["status"] == "awaiting_approval"


def test_an_unversioned_pinned_definition_is_read_with_its_digest():
    pipeline = pipeline_from_stored(OLD["pipeline"])
    assert pipeline.digest == OLD["pipeline_digest"] == OLD["release"]["pipeline_digest"]


def test_a_release_waiting_for_approval_moves_on_after_the_upgrade():
    pipeline = pipeline_from_stored(OLD["pipeline"])
    state = ReleaseState.from_dict(OLD["release"])
    approval = state.stages["approval"]
    assert state.status is ReleaseStatus.AWAITING_APPROVAL and approval.status is StageStatus.WAITING
    event = ApprovalDecided("m-approve", state.release_id, "approval", approval.attempt, "nonce-1", APPROVER, True,
                            approval.deadline)
    decision = decide(pipeline, state, event, approval.started_at + 60)
    assert decision.outcome is GateOutcome.APPLIED, decision.reason
    assert decision.state.stages["approval"].status is StageStatus.SUCCEEDED
    written = decision.state.to_dict()
    assert written["schema"] == RELEASE_SCHEMA
    assert ReleaseState.from_dict(written).to_dict() == written, "what the new code writes it reads back"
    assert decision.state.stages["prod-migrate"].status in (StageStatus.QUEUED, StageStatus.RUNNING)
    assert decision.commands, "the approval leads on to prod"


def test_every_old_field_survives_the_round_trip():
    upgraded = ReleaseState.from_dict(OLD["release"]).to_dict()
    assert {k: v for k, v in upgraded.items() if k != "schema"} == {
        **{k: v for k, v in upgraded.items() if k not in OLD["release"] and k != "schema"}, **OLD["release"]}


def test_documents_from_newer_code_are_refused_for_redelivery_not_misread():
    with pytest.raises(ConfigError, match="schema 99.*deploy the code that wrote it"):
        ReleaseState.from_dict({**OLD["release"], "schema": 99})
    with pytest.raises(ConfigError, match="schema 99"):
        pipeline_from_stored({**OLD["pipeline"], "schema": 99})


def test_the_stored_definition_carries_its_schema():
    pipeline = load_pipeline("pipelines/sample.yaml")
    stored = stored_pipeline(pipeline)
    assert stored["schema"] == PIPELINE_SCHEMA and pipeline_from_stored(stored).digest == pipeline.digest
