"""Check every gcloud command the deploy (and the teardown of deploy/README.md) may run against
the installed Cloud SDK: the command exists and knows each flag we pass (``gcloud ... --help``).

    python -m deploy.gcloud_check     # prints each command path and any unknown flag; exit 1 if any

No credentials and no network: ``--help`` reads the SDK's own command tree.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Iterable, Sequence

VERBS = {"describe", "create", "update", "delete", "add-iam-policy-binding", "deploy", "enable", "submit",
         "create-oidc", "add-invoker-policy-binding", "list"}
# The teardown path of deploy/README.md ("Try it in a scratch project"), checked the same way.
TEARDOWN: tuple[tuple[str, ...], ...] = (
    ("functions", "delete", "dispatch", "--region=R", "--quiet", "--project=P"),
    ("scheduler", "jobs", "delete", "pipeline-tick", "--location=R", "--quiet", "--project=P"),
    ("projects", "delete", "P", "--quiet"),
)


def command_path(command: Sequence[str]) -> tuple[str, ...]:
    """``("iam", "service-accounts", "create", "x", "--project=p")`` -> the first three."""
    path: list[str] = []
    for token in command:
        if token.startswith("-"):
            break
        path.append(token)
        if token in VERBS:
            break
    if path[-2:] == ["jobs", "create"] and len(command) > len(path) and command[len(path)] == "pubsub":
        path.append("pubsub")  # gcloud scheduler jobs create pubsub
    return tuple(path)


def flags(command: Sequence[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in command if t.startswith("--")]


def unknown_flags(commands: Iterable[Sequence[str]], gcloud: str = "gcloud") -> dict[tuple[str, ...], list[str]]:
    """Command path -> flags its ``--help`` does not mention (["<no such command>"] if it fails)."""
    env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
    helps: dict[tuple[str, ...], str | None] = {}
    problems: dict[tuple[str, ...], list[str]] = {}
    for command in commands:
        path = command_path(command)
        if path not in helps:
            done = subprocess.run([gcloud, *path, "--help"], capture_output=True, text=True, env=env, timeout=120)
            helps[path] = done.stdout if done.returncode == 0 else None
        text = helps[path]
        if text is None:
            problems[path] = ["<no such command>"]
            continue
        missing = [f for f in flags(command) if not re.search(rf"{re.escape(f)}\b", text)]
        if missing:
            problems.setdefault(path, []).extend(m for m in missing if m not in problems.get(path, []))
    return problems


def main() -> int:
    from deploy.config import load_config
    from deploy.model import build_plan

    if shutil.which("gcloud") is None:
        print("gcloud is not on PATH", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env.setdefault("RELEASE_PROJECT", "acme-release")
    env.setdefault("RELEASE_ARTIFACT_REGISTRY", "europe-west3-docker.pkg.dev/acme-release/noesis2")
    env.setdefault("DEPLOY_GITHUB_REPOSITORY", "acme/noesis2")
    commands = build_plan(load_config(env)).commands() + list(TEARDOWN)
    problems = unknown_flags(commands)
    for path in sorted({command_path(c) for c in commands}):
        print(f"{'FAIL' if path in problems else 'ok  '} gcloud {' '.join(path)}"
              + (f": {', '.join(problems[path])}" if path in problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
