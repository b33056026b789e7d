"""Which pipeline a push releases (shared/app/repositories.py) and the file's `repositories` field."""
from __future__ import annotations

import pytest

from shared.app.repositories import RepositoryMap
from shared.domain.errors import ConfigError, DefinitionError, WebhookRejected
from shared.domain.pipeline import parse_pipeline
from tests.unit.gate_helpers import DOC


def app(name: str, *repos: str):
    return parse_pipeline({**DOC, "name": name, "repositories": list(repos)})


def test_each_repository_maps_to_the_one_pipeline_that_lists_it_whatever_its_case():
    shop, admin = app("shop", "acme/shop", "acme/shop-mirror"), app("admin", "Acme/Admin")
    repos = RepositoryMap([shop, admin])
    assert repos.pipeline_for("acme/shop") is shop and repos.pipeline_for("ACME/Shop-Mirror") is shop
    assert repos.pipeline_for("acme/admin") is admin


def test_an_unmapped_repository_is_refused_not_given_a_default_pipeline():
    with pytest.raises(WebhookRejected) as refused:
        RepositoryMap([app("shop", "acme/shop"), parse_pipeline(DOC)]).pipeline_for("acme/other")
    assert refused.value.status == 422 and "repository acme/other releases no pipeline" in str(refused.value)


def test_a_repository_listed_twice_is_a_setting_to_fix():
    with pytest.raises(ConfigError, match="acme/shop is listed by two pipelines, 'shop' and 'copy'"):
        RepositoryMap([app("shop", "acme/shop"), app("copy", "ACME/shop")])


@pytest.mark.parametrize("value", ["shop", "acme/shop/x", 7, "acme/"])
def test_the_file_refuses_what_cannot_be_a_github_repository(value):
    with pytest.raises(DefinitionError, match="repositories: item 0: must be a GitHub repository"):
        app("shop", value)
