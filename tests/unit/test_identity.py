"""Identities compared in one normal form; unknown GitHub identities match nobody."""
from __future__ import annotations

import pytest

from shared.domain.errors import ConfigError
from shared.domain.identity import People

PEOPLE = People.parse("octocat=ann@example.com, Ann@Old.Example=ann@example.com")


@pytest.mark.parametrize("raw, person", [
    ("Approver@Example.com", "approver@example.com"),
    ("  ann@example.com ", "ann@example.com"),
    ("octocat", "ann@example.com"),
    ("OctoCat", "ann@example.com"),
    ("583231+octocat@users.noreply.github.com", "ann@example.com"),
    ("octocat@users.noreply.github.com", "ann@example.com"),
    ("ann@old.example", "ann@example.com"),
    ("999+stranger@users.noreply.github.com", None),
    ("stranger", None),
    ("", None),
])
def test_resolve(raw, person):
    assert PEOPLE.resolve(raw) == person


@pytest.mark.parametrize("aliases, person", [
    # a personal address with a mapped login is still the mapped person (self-approval stays refused)
    (("ann@personal.example", "Ann", "octocat"), "ann@example.com"),
    (("583231+octocat@users.noreply.github.com", "octocat"), "ann@example.com"),
    (("bob@example.com", "bob"), "bob@example.com"),  # nothing mapped: the address stands
    (("1+stranger@users.noreply.github.com", "stranger"), ""),  # cannot be matched: fails closed later
])
def test_the_pusher_is_the_mapped_person_when_any_name_is_mapped(aliases, person):
    assert PEOPLE.pusher(aliases) == person


def test_a_malformed_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match="RELEASE_PEOPLE"):
        People.parse("octocat")
