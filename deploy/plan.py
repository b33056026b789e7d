"""Deploy the orchestrator to GCP with least privilege.

    python -m deploy.plan --check      # validate the config, no network
    python -m deploy.plan --dry-run    # print every resource and binding (no credentials, no gcloud)
    python -m deploy.plan --dry-run --json
    python -m deploy.plan --apply      # run it with gcloud, describe before create

Inputs: RELEASE_* settings (shared/app/config.py), the pipeline file, DEPLOY_GITHUB_REPOSITORY
(or --github-repo) and optionally DEPLOY_PROJECT_NUMBER. See deploy/README.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence, TextIO

from deploy.apply import apply_plan, render
from deploy.config import DeployConfig, load_config, setup_check
from deploy.model import Action, Binding, Plan, Resource, build_plan, function_secrets
from shared.domain.errors import PipelineError

PHASE_TITLES = {
    "apis": "APIs",
    "identity": "Identities: service accounts, custom role, Workload Identity Federation",
    "secrets": "Secrets (created empty; the operator adds the values)",
    "messaging": "Pub/Sub topics",
    "data": "Firestore and Artifact Registry",
    "bindings": "IAM bindings",
    "functions": "Cloud Functions (gen2)",
    "delivery": "Event delivery: invokers, dead-letter policy, scheduler",
}


def plan_to_dict(plan: Plan) -> dict:
    def step(s) -> dict:
        data = asdict(s)
        data["type"] = type(s).__name__.lower()
        return data

    return {
        "project": plan.project,
        "steps": [step(s) for s in plan],
        "commands": [render(c) for c in plan.commands()],
    }


def print_plan(plan: Plan, out: TextIO) -> None:
    phase = None
    for s in plan:
        if s.phase != phase:
            phase = s.phase
            print(f"\n## {PHASE_TITLES.get(phase, phase)}", file=out)
        if isinstance(s, Resource):
            print(f"RESOURCE {s.kind} {s.name}  # {s.why}", file=out)
            print(f"    if missing ({render(s.describe)}):", file=out)
            print(f"    {render(s.create)}", file=out)
        elif isinstance(s, Binding):
            print(f"BINDING  {s.role} -> {s.member} on {s.scope} {s.target}  # {s.why}", file=out)
            print(f"    {render(s.command)}", file=out)
        elif isinstance(s, Action):
            print(f"ACTION   {s.kind} {s.name}  # {s.why}", file=out)
            print(f"    {render(s.command)}", file=out)
    print("\n${...} placeholders are looked up in the project by --apply.", file=out)


def run_check(config: DeployConfig, out: TextIO) -> int:
    findings = setup_check(config)
    for f in findings:
        print(f"{f.level.upper():8} {f.message}", file=out)
    # No network here: these are what --apply will look for before its first step.
    for secret in function_secrets(config):
        print(f"SECRET   {secret} must hold an enabled version before --apply (gcloud secrets create {secret} "
              f"--data-file=- --project={config.project}; versions add once it exists)", file=out)
    errors = [f for f in findings if f.level == "error"]
    print(f"setup check: {'FAILED' if errors else 'OK'} ({len(errors)} error(s), "
          f"{len(findings) - len(errors)} warning(s))", file=out)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m deploy.plan", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="print the plan; no gcloud, no credentials")
    mode.add_argument("--apply", action="store_true", help="run the plan with gcloud")
    mode.add_argument("--check", action="store_true", help="validate the config (setup check)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: machine-readable output")
    parser.add_argument("--project")
    parser.add_argument("--region")
    parser.add_argument("--github-repo", help="owner/name; the only repository WIF admits")
    parser.add_argument("--project-number")
    parser.add_argument("--pipeline-file")
    parser.add_argument("--source-dir", help="where --apply assembles the function source")
    args = parser.parse_args(argv)
    try:
        config = load_config(project=args.project, region=args.region, github_repository=args.github_repo,
                             project_number=args.project_number, pipeline_file=args.pipeline_file,
                             source_dir=args.source_dir)
        if args.check:
            return run_check(config, out)
        plan = build_plan(config)
        if args.dry_run:
            if args.json:
                json.dump(plan_to_dict(plan), out, indent=2)
                out.write("\n")
            else:
                print(f"# deploy plan for project {config.project}, region {config.region} (dry run)", file=out)
                print_plan(plan, out)
            return 0
        if run_check(config, out):
            print("fix the errors above before --apply", file=out)
            return 1
        from deploy.source import assemble_source

        apply_plan(plan, config, log=lambda line: print(line, file=out),
                   before_functions=lambda: print(f"source   {assemble_source(config)}", file=out))
        print("deploy finished", file=out)
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=out)
        return 1


if __name__ == "__main__":
    sys.exit(main())
