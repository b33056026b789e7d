"""The permission check's pure parts: which roles are required, and how real IAM policy
messages (google.iam.v1 Policy protobufs, as the API returns them) are judged."""
from __future__ import annotations

import copy

import pytest
from google.iam.v1 import policy_pb2
from google.type import expr_pb2

from shared.app.config import REPO_ROOT
from shared.domain.pipeline import load_pipeline, parse_pipeline, thaw
from shared.domain.preflight import (
    BASE_ROLES,
    SECRET_ACCESSOR_ROLE,
    PreflightReport,
    evaluate,
    format_report,
    prod_secret_names,
    required_roles,
    secret_id,
)
from tests.seed import REQUIRED_ROLES

SA = "release-pipeline@acme-release.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{SA}"


@pytest.fixture(scope="module")
def shipped():
    return load_pipeline(REPO_ROOT / "pipelines" / "noesis2.yaml")


def without_prod_secrets(pipeline):
    document = copy.deepcopy(thaw(pipeline.document))
    for stage in document["stages"]:
        stage.get("params", {}).pop("secrets", None)
    return parse_pipeline(document)


def policy(bindings: dict[str, list[str]], conditional: dict[str, list[str]] | None = None) -> policy_pb2.Policy:
    result = policy_pb2.Policy(version=3)
    for role, members in bindings.items():
        result.bindings.add(role=role, members=members)
    for role, members in (conditional or {}).items():
        result.bindings.add(role=role, members=members,
                            condition=expr_pb2.Expr(title="office hours", expression="request.time.getHours() < 18"))
    return result


def test_required_roles_are_the_seeds_list_for_the_shipped_pipeline(shipped):
    assert required_roles(shipped) == frozenset(REQUIRED_ROLES)


def test_secret_accessor_is_required_only_when_a_prod_stage_reads_secrets(shipped):
    assert prod_secret_names(shipped) == ("noesis2-prod-database-url",)
    bare = without_prod_secrets(shipped)
    assert prod_secret_names(bare) == ()
    assert required_roles(bare) == BASE_ROLES | {"roles/logging.logWriter"}
    assert SECRET_ACCESSOR_ROLE not in required_roles(bare)


def test_secrets_of_non_prod_stages_do_not_count(shipped):
    document = copy.deepcopy(thaw(without_prod_secrets(shipped).document))
    staging = next(s for s in document["stages"] if s["id"] == "staging-migrate")
    staging["params"]["secrets"] = {"DATABASE_URL": "noesis2-staging-database-url"}
    assert SECRET_ACCESSOR_ROLE not in required_roles(parse_pipeline(document))


@pytest.mark.parametrize("reference, expected", [
    ("db-url", "db-url"),
    ("db-url:latest", "db-url"),
    ("projects/p/secrets/db-url/versions/3", "db-url"),
])
def test_secret_references_are_reduced_to_the_secret_id(reference, expected):
    assert secret_id(reference) == expected


def test_complete_policy_passes_with_no_warnings(shipped):
    report = evaluate(policy({role: [MEMBER] for role in REQUIRED_ROLES}), SA, shipped)
    assert report.ok and report.missing == [] and report.extra == []
    assert report.checked_roles == sorted(REQUIRED_ROLES)


def test_each_missing_role_fails_and_is_named(shipped):
    for absent in sorted(REQUIRED_ROLES):
        granted = {role: [MEMBER] for role in REQUIRED_ROLES if role != absent}
        report = evaluate(policy(granted), SA, shipped)
        assert not report.ok
        assert report.missing == [absent]
        assert report.first_failure == f"missing role {absent} for {SA}"


def test_roles_of_other_members_do_not_count(shipped):
    others = {role: ["serviceAccount:someone-else@acme-release.iam.gserviceaccount.com", "user:a@b.c"]
              for role in REQUIRED_ROLES}
    report = evaluate(policy(others), SA, shipped)
    assert report.missing == sorted(REQUIRED_ROLES)


def test_extra_role_is_a_warning_not_a_failure(shipped):
    granted = {role: [MEMBER] for role in REQUIRED_ROLES} | {"roles/owner": [MEMBER]}
    report = evaluate(policy(granted), SA, shipped)
    assert report.ok
    assert report.extra == ["roles/owner"]
    assert "WARNING  extra role roles/owner" in format_report(report)


def test_conditional_grant_does_not_satisfy_a_requirement(shipped):
    granted = {role: [MEMBER] for role in REQUIRED_ROLES if role != "roles/run.admin"}
    report = evaluate(policy(granted, conditional={"roles/run.admin": [MEMBER]}), SA, shipped)
    assert report.missing == ["roles/run.admin"]
    assert any("roles/run.admin" in note and "condition" in note for note in report.notes)


def test_secret_accessor_granted_per_secret_satisfies_the_check(shipped):
    project_roles = {role: [MEMBER] for role in REQUIRED_ROLES if role != SECRET_ACCESSOR_ROLE}
    per_secret = {"noesis2-prod-database-url": policy({SECRET_ACCESSOR_ROLE: [MEMBER]})}
    assert evaluate(policy(project_roles), SA, shipped, per_secret).ok
    # Unread secret policies: only a project-wide grant could count.
    assert evaluate(policy(project_roles), SA, shipped).missing == [SECRET_ACCESSOR_ROLE]
    # Read, but the binding is on the secret for someone else.
    other = {"noesis2-prod-database-url": policy({SECRET_ACCESSOR_ROLE: ["user:a@b.c"]})}
    report = evaluate(policy(project_roles), SA, shipped, other)
    assert report.missing == [SECRET_ACCESSOR_ROLE]
    assert any("noesis2-prod-database-url" in note for note in report.notes)


def test_secret_accessor_without_prod_secrets_is_extra(shipped):
    report = evaluate(policy({role: [MEMBER] for role in REQUIRED_ROLES}), SA, without_prod_secrets(shipped))
    assert report.ok
    assert report.extra == [SECRET_ACCESSOR_ROLE]


def test_format_report_lists_failures_first():
    report = PreflightReport(service_account=SA, missing=["roles/run.admin"], extra=["roles/owner"],
                             checked_roles=["roles/run.admin"])
    lines = format_report(report).splitlines()
    assert lines[0] == f"preflight for {SA}: FAILED"
    assert lines[1] == "  MISSING  roles/run.admin"
    assert "roles/owner" in lines[2]


def test_report_says_it_sees_direct_bindings_only_and_reads_the_role_table(shipped):
    granted = {role: [MEMBER] for role in REQUIRED_ROLES if role != "roles/run.developer"}
    report = evaluate(policy(granted), SA, shipped)
    assert report.missing == ["roles/run.developer"]  # the seed's list still decides
    assert any("direct bindings only" in note and "group" in note for note in report.notes)
    # The role -> permission table the stand-in enforces: run.admin carries what run.developer gives us.
    assert any(note.startswith("roles/run.developer is missing, but the granted roles carry") for note in report.notes)
