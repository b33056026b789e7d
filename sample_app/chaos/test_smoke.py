"""The sample app's chaos smoke tests, run against a served app: CHAOS_BASE_URL=http://… pytest
sample_app/chaos. Each test is one real request; a share of failing `/` answers fails that share."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

BASE = os.environ.get("CHAOS_BASE_URL", "")
pytestmark = pytest.mark.skipif(not BASE, reason="CHAOS_BASE_URL is not set (no app to test)")


def get(path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(BASE + path, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.mark.parametrize("attempt", range(20))
def test_home_answers_with_the_version(attempt):
    status, body = get("/")
    assert status == 200 and "version" in body


def test_liveliness_is_ok():
    assert get("/health/liveliness") == (200, {"status": "ok"})


def test_an_unknown_route_is_404():
    assert get("/no-such-page")[0] == 404


@pytest.mark.skipif(not BASE.startswith("https://"), reason="the app is served over plain HTTP here; no TLS to check")
def test_tls_is_required():
    assert get("/")[0] == 200
