"""Label values, revision names and traffic splits for Cloud Run."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.adapters.executors.run_services import apply_env, new_template
from shared.adapters.executors.traffic import (
    Split,
    current_split,
    label_value,
    plan_split,
    release_labels,
    revision_name,
    split_reached,
)

LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")
REVISION = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize("raw, clean", [
    ("1.2.3", "1-2-3"),
    ("1.2.3-rc.1+Build.7", "1-2-3-rc-1-build-7"),
    ("ABC1234", "abc1234"),
    ("x" * 80, "x" * 63),
])
def test_label_values(raw, clean):
    assert label_value(raw) == clean


@given(st.text())
def test_any_text_becomes_a_valid_label_value(raw):
    assert LABEL.match(label_value(raw))


def test_release_labels_use_the_short_sha():
    assert release_labels("1.2.3", "ABCDEF1234567890") == {"version": "1-2-3", "commit": "abcdef1"}


def test_revision_names_are_deterministic_valid_and_distinct():
    a = revision_name("noesis2-litellm-staging", "acme-noesis2-abc1234def56.staging-deploy.a1")
    assert a == revision_name("noesis2-litellm-staging", "acme-noesis2-abc1234def56.staging-deploy.a1")
    assert a.startswith("noesis2-litellm-staging-") and REVISION.match(a) and len(a) <= 63
    assert a != revision_name("noesis2-litellm-staging", "acme-noesis2-abc1234def56.staging-deploy.a2")
    assert a != revision_name("noesis2-web-staging", "acme-noesis2-abc1234def56.staging-deploy.a1")


def test_full_traffic_goes_to_the_new_revision_only():
    current = [Split("web-old", 90), Split("web-older", 10, "canary")]
    assert plan_split(current, "web-new", 100) == [Split("web-new", 100)]
    assert plan_split(current, "web-new", 100, "canary") == [Split("web-new", 100, "canary")]


def test_canary_keeps_the_rest_on_the_revision_that_served_most():
    current = [Split("web-a", 30, "blue"), Split("web-b", 70)]
    assert plan_split(current, "web-new", 10, "canary") == [Split("web-new", 10, "canary"), Split("web-b", 90)]
    # the previous revision keeps its own tag unless it is the tag that moves
    current = [Split("web-b", 100, "canary")]
    assert plan_split(current, "web-new", 10, "canary") == [Split("web-new", 10, "canary"), Split("web-b", 90)]
    current = [Split("web-b", 100, "stable")]
    assert plan_split(current, "web-new", 10, "canary") == [
        Split("web-new", 10, "canary"), Split("web-b", 90, "stable")]


def test_canary_on_a_first_deploy_takes_everything():
    assert plan_split([], "web-new", 10, "canary") == [Split("web-new", 100, "canary")]


def test_raising_the_canary_moves_the_rest_off_the_old_revision():
    current = [Split("web-new", 10, "canary"), Split("web-old", 90)]
    assert plan_split(current, "web-new", 100, "canary") == [Split("web-new", 100, "canary")]
    assert plan_split(current, "web-new", 50, "canary") == [Split("web-new", 50, "canary"), Split("web-old", 50)]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 100)), max_size=3),
       st.integers(1, 100))
def test_every_plan_adds_up_to_100(targets, percent):
    current = [Split(f"web-{r}", p) for r, p in targets]
    plan = plan_split(current, "web-new", percent, "canary")
    assert sum(s.percent for s in plan) == 100
    assert plan[0].revision == "web-new" and len({s.revision for s in plan}) == len(plan)


def test_current_split_reads_statuses_and_resolves_latest():
    from google.cloud import run_v2

    latest = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
    service = run_v2.Service(latest_ready_revision="projects/p/locations/r/services/web/revisions/web-7",
                             traffic_statuses=[run_v2.TrafficTargetStatus(type_=latest, percent=100)])
    assert current_split(service) == [Split("web-7", 100)]
    assert split_reached(current_split(service), [Split("web-7", 100)])
    assert not split_reached(current_split(service), [Split("web-8", 100)])


def test_new_template_keeps_settings_and_every_other_env_var():
    from google.cloud import run_v2

    old = run_v2.RevisionTemplate(
        revision="web-old", service_account="sa@p.iam.gserviceaccount.com", labels={"team": "x", "version": "0-9"},
        containers=[run_v2.Container(image="reg/app:v0.9", env=[
            run_v2.EnvVar(name="OLD", value="1"),
            run_v2.EnvVar(name="DB", value_source={"secret_key_ref": {"secret": "db", "version": "latest"}}),
        ])],
    )
    new = new_template(old, "web-new", "reg/app:v1.0", {"version": "1-0", "commit": "abc1234"}, {"MODE": "prod"})
    assert new.revision == "web-new" and new.service_account == "sa@p.iam.gserviceaccount.com"
    assert dict(new.labels) == {"team": "x", "version": "1-0", "commit": "abc1234"}
    assert new.containers[0].image == "reg/app:v1.0"
    # Finding 12: a deploy updates the variables it names and keeps the service's others.
    assert [(e.name, e.value) for e in new.containers[0].env] == [("OLD", "1"), ("DB", ""), ("MODE", "prod")]
    assert old.revision == "web-old" and old.containers[0].image == "reg/app:v0.9"  # not modified
    container = run_v2.Container(env=[run_v2.EnvVar(name="DB", value_source={"secret_key_ref": {"secret": "db"}})])
    apply_env(container, {"DB": "literal"})
    assert [(e.name, e.value) for e in container.env] == [("DB", "literal")]
