"""Two commits of this repository for tests that must tell images apart (issue 22).

A clone of HEAD where OLD lacks the sample app's newest migration and NEW (the commit
after it) has it again, so what a migrate job applied shows which image ran.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from shared.app.config import REPO_ROOT

MIGRATION = "sample_app/migrations/0001_feature_flags.sql"


def two_commits(repo: Path) -> dict[str, str]:
    """Clone HEAD into ``repo``; returns {"url", "old", "new"} (commit shas)."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(repo)], check=True)
    if not (repo / MIGRATION).is_file():
        raise AssertionError(f"HEAD must carry {MIGRATION} (commit your work first)")
    subprocess.run(git + ["rm", "--quiet", MIGRATION], check=True)
    subprocess.run(git + ["commit", "--quiet", "-m", "old: before the migration"], check=True)
    old = _head(git)
    subprocess.run(git + ["revert", "--no-edit", "--quiet", "HEAD"], check=True, capture_output=True)
    return {"url": str(repo), "old": old, "new": _head(git)}


def _head(git: list[str]) -> str:
    return subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
