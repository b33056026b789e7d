"""Every Firestore query in the code is mapped to the index that serves it, and every TTL
policy reaches the deploy. The emulator runs any query without an index, so running the
queries would prove nothing: the queries are read from the source instead."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deploy.config import load_config
from deploy.firestore import QUERIES, TTL_POLICIES, CompositeIndex, Query, index_for, needs_composite
from deploy.model import build_plan
from tests.unit.test_deploy_plan import ENV

ROOT = Path(__file__).resolve().parents[2]


def queries_in_code() -> dict[str, Query]:
    """"file:function" -> the shape of the query built in it (FieldFilter ops and order_by fields)."""
    found: dict[str, Query] = {}
    for path in sorted((ROOT / "shared").rglob("*.py")) + sorted((ROOT / "functions").rglob("*.py")):
        if "testing" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            equalities, ranges, orders = [], [], []
            for call in ast.walk(function):
                if not isinstance(call, ast.Call) or not isinstance(call.func, (ast.Attribute, ast.Name)):
                    continue
                name = call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
                if name == "FieldFilter" and len(call.args) >= 2:
                    field, op = (a.value if isinstance(a, ast.Constant) else None for a in call.args[:2])
                    assert isinstance(field, str) and isinstance(op, str), f"{path}: a FieldFilter must name its field and op"
                    (equalities if op == "==" else ranges).append(field)
                elif name == "order_by" and call.args:
                    assert isinstance(call.args[0], ast.Constant), f"{path}: order_by must name its field"
                    orders.append(call.args[0].value)
                elif name in ("where", "collection_group") and call.args:
                    raise AssertionError(f"{path}:{call.lineno}: use where(filter=FieldFilter(...)) so the query can be read")
            if equalities or ranges or orders:
                key = f"{path.relative_to(ROOT)}:{function.name}"
                found[key] = Query("", tuple(sorted(equalities)), tuple(sorted(ranges)), tuple(sorted(orders)))
    return found


def test_every_query_in_the_code_is_in_the_table_with_its_shape():
    in_code = queries_in_code()
    assert set(in_code) == set(QUERIES), "add the query to deploy/firestore.py (or remove the stale entry)"
    for key, shape in in_code.items():
        declared = QUERIES[key]
        assert (tuple(sorted(declared.equalities)), tuple(sorted(declared.ranges)), tuple(sorted(declared.orders))) == (
            shape.equalities, shape.ranges, shape.orders), key


@pytest.mark.parametrize("key", sorted(QUERIES))
def test_every_query_that_needs_a_composite_index_has_one_declared(key):
    query = QUERIES[key]
    if needs_composite(query):
        assert index_for(query) is not None, f"{key} needs a composite index in deploy/firestore.py"


def test_the_rule_knows_which_queries_a_single_field_index_cannot_serve():
    assert not needs_composite(Query("c", equalities=("a", "b", "c")))  # index merging
    assert not needs_composite(Query("c", ranges=("t",), orders=("t",)))
    assert needs_composite(Query("c", equalities=("repo",), orders=("created_at",)))
    assert needs_composite(Query("c", equalities=("status",), ranges=("wake_at",)))
    assert needs_composite(Query("c", ranges=("a",), orders=("b",)))


def test_a_declared_index_serves_the_query_it_was_made_for(monkeypatch):
    import deploy.firestore as module

    index = CompositeIndex("releases", (("status", "ascending"), ("wake_at", "ascending")))
    monkeypatch.setattr(module, "COMPOSITE_INDEXES", (index,))
    assert module.index_for(Query("releases", equalities=("status",), ranges=("wake_at",))) == index
    assert module.index_for(Query("releases", equalities=("repo",), ranges=("wake_at",))) is None


def test_ttl_policies_reach_the_deploy_plan():
    plan = build_plan(load_config(ENV))
    ttl = {s.name: s.command for s in plan.actions if s.kind == "firestore-ttl"}
    assert set(ttl) == {f"{collection}.{field}" for collection, field in TTL_POLICIES}
    for name, command in ttl.items():
        assert command[:5] == ("firestore", "fields", "ttls", "update", "expire_at") and "--enable-ttl" in command
    assert {c for c, _ in TTL_POLICIES} == {"releases", "dead_letters", "approvals", "deliveries", "github_reports"}
