"""Who someone is, in one normal form, before any comparison.

E-mail addresses are compared case-folded (``Approver@Example.com`` is
``approver@example.com``). GitHub pushes often carry a login or the noreply
address ``<id>+<login>@users.noreply.github.com``, which never equals a person's
mail address: configuration maps GitHub logins (and other aliases) to people
(``RELEASE_PEOPLE="octocat=ann@example.com,ann@old.example=ann@example.com"``).

``resolve`` answers None when an identity cannot be matched to a person; callers
that guard something (self-approval) then fail closed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from shared.domain.errors import ConfigError

NOREPLY = re.compile(r"^(?:\d+\+)?(?P<login>[a-z0-9](?:[a-z0-9-]{0,38}))@users\.noreply\.github\.com$")
GITHUB_LOGIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38})$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise(raw: str) -> str:
    """Trimmed and case-folded: the form every comparison uses."""
    return str(raw or "").strip().casefold()


@dataclass(frozen=True)
class People:
    """Aliases (GitHub logins, other addresses) -> a person's address, all normalised."""

    aliases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "People":
        """``alias=person@example.com`` pairs separated by commas (the RELEASE_PEOPLE setting)."""
        aliases: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in (text or "").split(","))):
            alias, sep, person = pair.partition("=")
            alias, person = normalise(alias), normalise(person)
            if not sep or not alias or not EMAIL.match(person):
                raise ConfigError(f"RELEASE_PEOPLE: {pair!r} is not alias=person@example.com")
            aliases[alias] = person
        return cls(aliases)

    def resolve(self, raw: str) -> str | None:
        """The person's normalised address, or None when it cannot be matched."""
        value = normalise(raw)
        if not value:
            return None
        if value in self.aliases:
            return self.aliases[value]
        noreply = NOREPLY.match(value)
        if noreply:
            return self.aliases.get(noreply.group("login"))
        if EMAIL.match(value):
            return value
        return None  # a bare login nobody mapped

    def pusher(self, aliases) -> str:
        """The person behind a push that names them several ways (address, login): a name the
        configuration maps wins over a bare address, so a push from a personal address with a mapped
        login is still that person (who must not approve it); "" when no name can be matched."""
        mapped = [self.aliases.get(normalise(a)) or self._noreply_person(a) for a in aliases]
        return next((p for p in mapped if p), None) or next((p for p in map(self.resolve, aliases) if p), "")

    def _noreply_person(self, raw: str) -> str | None:
        noreply = NOREPLY.match(normalise(raw))
        return self.aliases.get(noreply.group("login")) if noreply else None


def approval_refusal(approver: str, approvers, pusher: str, pushed_by: str) -> str:
    """Why ``approver`` may not approve a release pushed by ``pusher`` ("" when they may).

    ``pusher`` is the person the push was matched to (``People.resolve``), "" when it
    could not be: then nobody can rule out that the approver pushed it, so it fails closed."""
    who = normalise(approver)
    if who not in {normalise(a) for a in approvers}:
        return f"{approver} is not an approver (not on the stage's list)"
    if not pusher:
        return (f"the pusher {pushed_by!r} cannot be matched to a person (map the GitHub login in "
                "RELEASE_PEOPLE), so self-approval cannot be ruled out")
    if who == normalise(pusher):
        return f"{approver} pushed this commit and cannot approve it"
    return ""
