"""Identities are compared normalised; an approval fails closed when the pusher cannot be matched.

Why (issue 11): a release pushed as ``Approver@Example.com`` was approved by
``approver@example.com``; GitHub pushes often name the pusher by login or by the
noreply address ``<id>+<login>@users.noreply.github.com``, which equals nobody's address.
"""
from __future__ import annotations

import json

from shared.app.push import parse_push
from shared.domain.gate import GateOutcome, decide
from shared.domain.identity import People
from shared.domain.state import ReleaseStatus, new_release
from tests.unit.gate_helpers import APPROVER, PIPELINE, T0, approval, run_to


def at_approval(pushed_by, pusher=None):
    state = run_to("approval")
    fresh = new_release(PIPELINE, repo="acme/app", ref="refs/heads/main", commit="abcdef1234567890",
                        version="1.2.3", pushed_by=pushed_by, now=T0, pusher=pusher)
    state.pushed_by, state.pusher = fresh.pushed_by, fresh.pusher
    return state


def test_the_pusher_cannot_approve_with_their_address_in_another_case():
    state = at_approval("Boss@Example.COM")
    d = decide(PIPELINE, state, approval(state, approver=APPROVER), T0)
    assert d.outcome is GateOutcome.REFUSED and "pushed this commit" in d.reason


def test_an_approver_named_in_another_case_in_the_file_is_still_an_approver():
    state = at_approval("dev@example.com")
    d = decide(PIPELINE, state, approval(state, approver="BOSS@example.com"), T0)
    assert d.outcome is GateOutcome.APPLIED


def test_an_unmatched_github_noreply_pusher_fails_closed():
    state = at_approval("583231+boss-gh@users.noreply.github.com")
    assert state.pusher == ""
    d = decide(PIPELINE, state, approval(state, approver=APPROVER), T0)
    assert d.outcome is GateOutcome.REFUSED and "cannot be matched" in d.reason
    assert d.state is None or d.state.status is ReleaseStatus.AWAITING_APPROVAL


def test_a_mapped_github_login_is_the_person_it_maps_to():
    people = People.parse("boss-gh=boss@example.com")
    payload = {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "acme/app"},
               "pusher": {"name": "boss-gh", "email": "583231+boss-gh@users.noreply.github.com"},
               "head_commit": {"message": "x\n\nRelease-Version: 1.2.3"}}
    push = parse_push(json.loads(json.dumps(payload)), "main")
    pusher = next((p for p in map(people.resolve, push.aliases) if p), "")
    assert pusher == "boss@example.com"
    state = at_approval(push.pushed_by, pusher=pusher)
    d = decide(PIPELINE, state, approval(state, approver=APPROVER), T0)
    assert d.outcome is GateOutcome.REFUSED and "pushed this commit" in d.reason
