"""Carry out a plan with gcloud: describe before create, stop at the first failure.

Re-running is safe: a resource that exists is left alone, IAM bindings are added with
add-iam-policy-binding (a no-op when present), APIs and functions converge. The runner
is a small port (``Gcloud``) so the apply logic is tested with a fake cloud; the real
one shells out to the ``gcloud`` CLI with prompts disabled.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable, Protocol

from deploy.config import DeployConfig, DeployError
from deploy.model import Action, Binding, Plan, Resource, Step, function_secrets
from shared.app.config import REPO_ROOT

PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)(?::([A-Za-z0-9_-]+))?\}")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Gcloud(Protocol):
    def __call__(self, args: tuple[str, ...]) -> Result:
        """Run ``gcloud <args>``."""


def real_gcloud(args: tuple[str, ...]) -> Result:
    env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS="1")
    # From the repository root: `builds submit .` uploads it as the source of the tools image.
    done = subprocess.run(["gcloud", *args], capture_output=True, text=True, env=env, check=False, cwd=REPO_ROOT)
    return Result(done.returncode, done.stdout, done.stderr)


def render(args: tuple[str, ...]) -> str:
    return "gcloud " + " ".join(shlex.quote(a) for a in args)


class Resolver:
    """Fills the ``${...}`` placeholders from the project, once each."""

    def __init__(self, config: DeployConfig, gcloud: Gcloud):
        self._config = config
        self._gcloud = gcloud
        self._cache: dict[str, str] = {}
        if config.project_number:
            self._cache["PROJECT_NUMBER"] = config.project_number

    def _value(self, key: str, arg: str | None) -> str:
        cache_key = f"{key}:{arg}" if arg else key
        if cache_key not in self._cache:
            self._cache[cache_key] = self._lookup(key, arg)
        return self._cache[cache_key]

    def _lookup(self, key: str, arg: str | None) -> str:
        c = self._config
        if key == "PROJECT_NUMBER":
            return self._query(("projects", "describe", c.project, "--format=value(projectNumber)"))
        if key == "SUBSCRIPTION" and arg:
            trigger = self._query(("functions", "describe", arg, "--gen2", f"--region={c.region}",
                                   "--format=value(eventTrigger.trigger)", f"--project={c.project}"))
            return self._query(("eventarc", "triggers", "describe", trigger.rsplit("/", 1)[-1],
                                f"--location={c.region}", "--format=value(transport.pubsub.subscription)",
                                f"--project={c.project}")).rsplit("/", 1)[-1]
        raise DeployError(f"unknown placeholder ${{{key}}}")

    def _query(self, args: tuple[str, ...]) -> str:
        result = self._gcloud(args)
        value = result.stdout.strip()
        if result.returncode != 0 or not value:
            raise DeployError(f"could not resolve a value with `{render(args)}`: {result.stderr.strip()[:500]}")
        return value

    def fill(self, args: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(PLACEHOLDER.sub(lambda m: self._value(m.group(1), m.group(2)), a) for a in args)


def secrets_without_value(config: DeployConfig, gcloud: Gcloud) -> list[str]:
    """The secrets the plan's functions mount that have no enabled version (or do not exist):
    Cloud Run resolves every secret reference when a revision deploys, and fails on these."""
    empty = []
    for secret in function_secrets(config):
        result = gcloud(("secrets", "versions", "list", secret, "--filter=state:ENABLED", "--limit=1",
                         "--format=value(name)", f"--project={config.project}"))
        if result.returncode != 0 or not result.stdout.strip():
            empty.append(secret)
    return empty


def apply_plan(
    plan: Plan,
    config: DeployConfig,
    gcloud: Gcloud = real_gcloud,
    log: Callable[[str], None] = print,
    before_functions: Callable[[], None] | None = None,
) -> list[str]:
    """Run every step; returns what was done, one line each. Raises DeployError on failure.

    Before the first step, every secret the functions mount must hold an enabled version (the
    operator adds them; ``--check`` lists them): a deploy that would fail at the fourth function
    stops before it changes anything. Before the first function ``before_functions`` (assembling
    the source) runs."""
    empty = secrets_without_value(config, gcloud)
    if empty:
        raise DeployError(
            "stopping before the first step: secret(s) " + ", ".join(empty) + " have no enabled version. "
            "Create them with a value (see deploy/README.md, 'Secrets') and run --apply again.")
    resolver = Resolver(config, gcloud)
    done: list[str] = []
    functions_ready = False
    for step in plan:
        if step.phase == "functions" and not functions_ready:
            if before_functions is not None:
                before_functions()
            functions_ready = True
        line = _run_step(step, resolver, gcloud)
        log(line)
        done.append(line)
    return done


def _run_step(step: Step, resolver: Resolver, gcloud: Gcloud) -> str:
    if isinstance(step, Resource):
        if gcloud(resolver.fill(step.describe)).returncode == 0:
            return f"exists   {step.kind} {step.name}"
        _check(step, resolver.fill(step.create), gcloud)
        return f"created  {step.kind} {step.name}"
    if isinstance(step, Binding):
        _check(step, resolver.fill(step.command), gcloud)
        return f"bound    {step.role} -> {resolver.fill((step.member,))[0]} on {step.scope} {resolver.fill((step.target,))[0]}"
    assert isinstance(step, Action)
    _check(step, resolver.fill(step.command), gcloud)
    return f"applied  {step.kind} {resolver.fill((step.name,))[0]}"


def _check(step: Step, args: tuple[str, ...], gcloud: Gcloud) -> None:
    result = gcloud(args)
    if result.returncode != 0:
        what = getattr(step, "name", None) or getattr(step, "role", "")
        raise DeployError(f"{step.phase}: {what}: `{render(args)}` failed: {result.stderr.strip()[:800]}")
