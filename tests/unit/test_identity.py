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


def test_same_person_is_unknown_when_either_side_cannot_be_matched():
    assert PEOPLE.same_person("583231+octocat@users.noreply.github.com", "ANN@example.com") is True
    assert PEOPLE.same_person("bob@example.com", "ann@example.com") is False
    assert PEOPLE.same_person("1+stranger@users.noreply.github.com", "ann@example.com") is None


def test_a_malformed_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match="RELEASE_PEOPLE"):
        People.parse("octocat")
