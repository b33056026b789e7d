"""Fixtures of the fault suite: the stand-in (Cloud Build API) in this process."""
from __future__ import annotations

import pytest

from local.standin.server import StandIn, StandInConfig
from tests.conftest import LOGS, PROJECT


@pytest.fixture(scope="module")
def standin():
    """Builds of the fault pipeline's image stay WORKING (HANG): nothing ends them behind the
    test's back, and no notification is published (no Pub/Sub configured)."""
    cfg = StandInConfig(project=PROJECT, local_images=frozenset(), log_dir=LOGS / "faults-standin")
    with StandIn(cfg) as running:
        running.set_outcome("build", "rel-", "HANG")
        yield running
