"""The sample app's own tests: the stages of `make demo` run these for real."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sample_app.server import make_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve():
    servers = []

    def start(env: dict) -> str:
        server = make_server(env, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_root_reports_version_and_revision(serve):
    base = serve({"VERSION": "1.2.3", "REVISION": "web-00002-abc"})
    assert get(base + "/") == (200, {"version": "1.2.3", "revision": "web-00002-abc"})


def test_app_version_is_the_fallback(serve):
    base = serve({"APP_VERSION": "0.9.0"})
    assert get(base + "/")[1]["version"] == "0.9.0"


def test_liveliness_ok_then_failing(serve):
    assert get(serve({}) + "/health/liveliness") == (200, {"status": "ok"})
    status, body = get(serve({"FAIL_HEALTH": "1"}) + "/health/liveliness")
    assert status == 500 and body["status"] == "failing"


def test_unknown_path_is_404(serve):
    assert get(serve({}) + "/nope")[0] == 404


def run_migrate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sample_app.migrate", *args], cwd=ROOT,
                          env={"DATA_DIR": str(tmp_path / "data"), "PATH": ""}, capture_output=True, text=True)


def test_migrate_applies_schema_and_is_repeatable(tmp_path):
    assert run_migrate(tmp_path).returncode == 0
    assert run_migrate(tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "data" / "app.sqlite3") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        conn.execute("INSERT INTO visits (path, revision) VALUES ('/', 'r1')")


def test_migrate_fails_on_sql_error_and_leaves_nothing_half_applied(tmp_path):
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE good (id INTEGER);\nCREATE TABLE broken (;\n")
    result = run_migrate(tmp_path, str(bad))
    assert result.returncode == 1
    assert "failed" in result.stderr
    with sqlite3.connect(tmp_path / "data" / "app.sqlite3") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "good" not in tables


def test_a_bad_canary_fails_a_share_of_requests_while_health_stays_green(serve, capsys):
    base = serve({"CANARY_FAULTS": "5xx=0.05,error_logs=0.1", "REVISION": "web-00002-bad"})
    statuses = [get(base + "/")[0] for _ in range(40)]
    assert statuses.count(500) == 2 and statuses[19] == 500 and statuses[39] == 500
    assert all(get(base + "/health/liveliness")[0] == 200 for _ in range(5))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    errors = [line for line in lines if line["severity"] == "ERROR"]
    assert len(errors) == 4 and errors[0]["message"].startswith("Traceback") and errors[0]["time"].endswith("Z")


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown fault 'slowness'"):
        make_server({"CANARY_FAULTS": "slowness=3"}, port=0)
