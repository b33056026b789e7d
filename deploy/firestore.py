"""What Firestore must be told about our collections: the index each query needs, and the
TTL policies that delete old records.

Every query the code runs is listed in ``QUERIES`` with its shape (equality filters,
range filters, orderings). ``needs_composite`` applies Firestore's rule: single-field
indexes (automatic for every field) serve equality filters on any number of fields
(index merging), or one range filter and an ordering on the same field; anything else
(an equality plus a range or an ordering on another field, ranges or orderings on two
fields) needs a composite index, which must be declared in ``COMPOSITE_INDEXES``.
https://cloud.google.com/firestore/docs/query-data/index-overview
The emulator runs any query without an index, so a test cannot learn this by running
them: tests/unit/test_firestore_indexes.py reads the queries from the code instead and
checks them against this table.

TTL: a policy on ``expire_at`` per collection group; Firestore deletes a document some
time (typically within 24 h) after that timestamp passes. The field must hold a
timestamp, which the adapters write (shared/domain/wake.py says for how long).
https://cloud.google.com/firestore/docs/ttl
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    collection: str
    equalities: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()  # <, <=, >, >=, !=, in, not-in
    orders: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompositeIndex:
    collection: str
    fields: tuple[tuple[str, str], ...]  # (field, "ascending" | "descending")


# "module:function" -> the query it runs.
QUERIES: dict[str, Query] = {
    "shared/adapters/firestore_store.py:list_releases": Query("releases", orders=("created_at",)),
    "shared/adapters/firestore_store.py:list_due": Query("releases", ranges=("wake_at",), orders=("wake_at",)),
    "shared/adapters/firestore_dead_letters.py:list": Query("dead_letters", orders=("received_at",)),
    "shared/adapters/firestore_github_reports.py:due": Query("github_reports", ranges=("retry_at",)),
    "shared/adapters/firestore_approvals.py:find_open": Query(
        "approvals", equalities=("release_id", "stage", "attempt", "approver")),
}

COMPOSITE_INDEXES: tuple[CompositeIndex, ...] = ()  # no query needs one (see needs_composite)

TTL_POLICIES: tuple[tuple[str, str], ...] = (
    ("releases", "expire_at"),  # finished, superseded and stopped releases, 90 days after their last change
    ("dead_letters", "expire_at"),  # 30 days
    ("approvals", "expire_at"),  # 30 days after the link expired
    ("deliveries", "expire_at"),
    ("github_reports", "expire_at"),  # what reached GitHub, 90 days after the last report  # webhook delivery ids, 30 days (GitHub redelivers within hours)
)


def needs_composite(query: Query) -> bool:
    """True when no single-field index can serve the query (Firestore's rule, above)."""
    others = set(query.ranges) | set(query.orders)
    if len(others) > 1:
        return True
    return bool(others) and bool(query.equalities)


def index_for(query: Query) -> CompositeIndex | None:
    """The declared composite index that serves ``query``: its equality fields first, then
    its range/order field."""
    wanted_tail = [f for f in (*query.ranges, *query.orders)]
    for index in COMPOSITE_INDEXES:
        names = [name for name, _ in index.fields]
        if index.collection == query.collection and set(names[: len(query.equalities)]) == set(query.equalities) \
                and names[len(query.equalities):][:1] == wanted_tail[:1]:
            return index
    return None
