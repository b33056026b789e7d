"""``relctl``: the operator's command line.

Configured like the functions, from the environment (``RELEASE_*`` variables via
``Settings.from_env``, ``FIRESTORE_EMULATOR_HOST`` / ``PUBSUB_EMULATOR_HOST`` for the
emulators, Google default credentials otherwise). Commands that change a release
never write it: they ask the operator function (shared/app/operator.py), which checks
the caller's Google ID token against the operator list, records who asked and
publishes the event (``stage.replay``, ``chaos.requested``); the dispatcher's gate
decides, so the CLI cannot do anything the gate would refuse. ``--wait`` then reads the release to
tell the operator what the gate made of it.

Exit status: 0 done; 1 failed, refused or not found; 2 usage error or invalid
pipeline file; 3 timed out waiting; 130 interrupted. Errors are one line on stderr,
never a traceback (``RELCTL_DEBUG=1`` shows it).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from shared.app.config import Settings
from shared.domain.errors import DefinitionError, PipelineError
from shared.ui.notes import ReleaseNotFound, duration_text, iso, load_release, render, traffic_decisions
from shared.domain.pipeline import Pipeline, StageKind
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

ACTIVE_STAGE = (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class Context:
    """What the commands need, built on first use (a `validate` never touches Google)."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic

    @functools.cached_property
    def settings(self) -> Settings:
        return Settings.from_env()

    @functools.cached_property
    def store(self):
        from google.cloud import firestore

        from shared.adapters.firestore_store import FirestoreStore

        require_emulator("FIRESTORE_EMULATOR_HOST")
        return FirestoreStore(firestore.Client(project=self.settings.project), self.settings)

    def print(self, *parts: Any) -> None:
        print(*parts, file=self.out, flush=True)


def require_emulator(variable: str, timeout_s: float = 2.0) -> None:
    """Fail fast when an emulator host is set but nothing listens there: the client
    libraries would retry UNAVAILABLE for minutes before saying anything."""
    import socket

    host_port = os.environ.get(variable, "")
    if not host_port:
        return
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{variable}={host_port} is set but no emulator answers there ({exc})") from None


# -- read-only views --------------------------------------------------------------
def current_stage(state: ReleaseState) -> str:
    for stage_id, st in state.stages.items():
        if st.status in ACTIVE_STAGE:
            return stage_id
    return state.stopped_at_stage


def show_text(state: ReleaseState, pipeline: Pipeline) -> str:
    from shared.ui.dashboard import stage_detail

    lines = [
        f"release {state.release_id}  {state.status.value}",
        f"  {state.repo} {state.ref} @ {state.commit}",
        f"  version {state.version}  tag {state.tag}  pushed by {state.pushed_by}  created {iso(state.created_at)}",
    ]
    if state.waiting_for:
        lines.append(f"  queued: waiting for the {state.waiting_for} lock another release holds")
    if state.reason and state.status is ReleaseStatus.SUPERSEDED:
        lines.append(f"  {state.reason}")
    elif state.reason:
        lines.append(f"  stopped at {state.stopped_at_stage}: {state.reason}")
    if state.approval.get("approver"):
        lines.append(f"  approved by {state.approval['approver']} at {iso(state.approval.get('at'))}"
                     + (f" ({state.approval['reason']})" if state.approval.get("reason") else ""))
    traffic = [f"{d['percent']} % at {iso(d['at'])}" for d in traffic_decisions(state, pipeline)]
    if traffic:
        lines.append("  traffic: " + "; ".join(traffic))
    lines.append("")
    lines.append(f"  {'#':<4} {'STAGE':<18} {'STATUS':<10} {'ATTEMPT':<7} {'DURATION':<9} DETAIL")
    for stage in pipeline.stages:
        st = state.stages[stage.id]
        detail = stage_detail(stage, st, state, pipeline).replace("\n", " ")
        lines.append(f"  {stage.number:<4} {stage.id:<18} {st.status.value:<10} {st.attempt:<7} "
                     f"{duration_text(st.duration_s):<9} {detail}".rstrip())
    return "\n".join(lines)


def cmd_list(args, ctx: Context) -> int:
    states = ctx.store.list_releases(args.limit)
    if args.json:
        from shared.ui.dashboard import release_summary

        ctx.print(json.dumps([release_summary(s) for s in states], indent=2, sort_keys=True))
        return EXIT_OK
    if not states:
        ctx.print("no releases")
        return EXIT_OK
    ctx.print(f"{'RELEASE':<36} {'STATUS':<18} {'TAG':<22} {'STAGE':<16} CREATED")
    for s in states:
        ctx.print(f"{s.release_id:<36} {s.status.value:<18} {s.tag:<22} {current_stage(s) or '-':<16} {iso(s.created_at)}")
    return EXIT_OK


def cmd_show(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    if args.json:
        from shared.ui.dashboard import release_json

        ctx.print(json.dumps(release_json(state, pipeline), indent=2, sort_keys=True, default=str))
    else:
        ctx.print(show_text(state, pipeline))
    return EXIT_OK


def cmd_notes(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    ctx.out.write(render(state, pipeline))
    return EXIT_OK


def cmd_watch(args, ctx: Context) -> int:
    """Redraw on every change (a terminal) or print one line per stage change (a pipe)."""
    redraw = ctx.out.isatty()
    deadline = ctx.monotonic() + args.timeout if args.timeout else None
    last_view, seen = "", {}
    while True:
        state, pipeline = load_release(ctx.store, args.release)
        if redraw:
            view = show_text(state, pipeline)
            if view != last_view:
                ctx.out.write("\x1b[H\x1b[2J" + view + "\n")
                ctx.out.flush()
                last_view = view
        else:
            for line in _changes(state, pipeline, seen):
                ctx.print(line)
        if state.status is ReleaseStatus.SUCCEEDED:
            ctx.print(f"release {state.release_id} succeeded: {state.tag} takes all traffic")
            return EXIT_OK
        if state.status is ReleaseStatus.STOPPED:
            ctx.print(f"release {state.release_id} stopped: {state.reason}")
            return EXIT_FAILED
        if state.status is ReleaseStatus.SUPERSEDED:
            ctx.print(f"release {state.release_id} was {state.reason or 'superseded by a newer release'}")
            return EXIT_FAILED
        if deadline is not None and ctx.monotonic() >= deadline:
            print(f"relctl: release {state.release_id} still {state.status.value} after {args.timeout:g}s",
                  file=sys.stderr)
            return EXIT_TIMEOUT
        ctx.sleep(args.interval)


def _changes(state: ReleaseState, pipeline: Pipeline, seen: dict) -> list[str]:
    lines = []
    if seen.get("") != state.status:
        seen[""] = state.status
        lines.append(f"release {state.release_id} {state.status.value}")
    for stage in pipeline.stages:
        st = state.stages[stage.id]
        key = (st.status, st.attempt)
        if seen.get(stage.id, (StageStatus.PENDING, 0)) == key:
            continue
        seen[stage.id] = key
        took = f" in {duration_text(st.duration_s)}" if st.duration_s is not None else ""
        why = f": {st.reason}" if st.reason else ""
        lines.append(f"  [{stage.number:>3}] {stage.id:<18} {st.status.value} (attempt {st.attempt}){took}{why}")
    return lines


# -- commands that go through the operator function ---------------------------------------------------
def operator_call(ctx: Context, args, action: str, params: dict, request_id: str | None = None) -> dict:
    """Through the operator function, which checks the caller's Google ID token and records who asked."""
    from shared.ui.operator_client import call_operator

    return call_operator(ctx.settings, action, params, request_id=request_id, as_=getattr(args, "as_", None))


def await_release(ctx: Context, release_id: str, seconds: float, answered):
    """Re-read the release every 0.5 s until ``answered(state)`` returns something, or None at the end."""
    deadline = ctx.monotonic() + seconds
    while ctx.monotonic() < deadline:
        ctx.sleep(0.5)
        now, _ = load_release(ctx.store, release_id)
        result = answered(now)
        if result is not None:
            return now, result
    return None


def publish_replay(ctx: Context, state: ReleaseState, stage: str, reason: str, args) -> int:
    answer = operator_call(ctx, args, "replay", {"release_id": state.release_id, "stage": stage, "reason": reason},
                           request_id=args.replay_id)
    replay_id = answer["replay_id"]
    ctx.print(f"requested replay {replay_id}: release {state.release_id} stage {stage} "
              f"(by {answer['requested_by']}, message {answer['message_id']})")
    if not args.wait:
        return EXIT_OK
    got = await_release(ctx, state.release_id, args.wait,
                        lambda now: next((r for r in now.replays if r.get("replay_id") == replay_id), None))
    if got is None:
        print(f"relctl: replay {replay_id} not handled within {args.wait:g}s (is the dispatcher running?)",
              file=sys.stderr)
        return EXIT_TIMEOUT
    now, record = got
    if not record.get("accepted"):
        print(f"relctl: replay {replay_id} refused: {record.get('reason', '')}", file=sys.stderr)
        return EXIT_FAILED
    st = now.stages[stage]
    ctx.print(f"accepted: stage {stage} is {st.status.value} (attempt {st.attempt}); release {now.status.value}")
    return EXIT_OK


def cmd_replay(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    if not pipeline.has_stage(args.stage):
        raise PipelineError(f"release {state.release_id} has no stage {args.stage!r} "
                            f"(stages: {', '.join(s.id for s in pipeline.stages)})")
    return publish_replay(ctx, state, args.stage, args.reason, args)


def cmd_resend_approval(args, ctx: Context) -> int:
    """A replay of the approval stage: a new attempt, new links; the old links name the old attempt and stop working."""
    state, pipeline = load_release(ctx.store, args.release)
    if pipeline.approval_index is None:
        raise PipelineError(f"pipeline {pipeline.name} has no approval stage")
    stage = pipeline.stages[pipeline.approval_index]
    st = state.stages[stage.id]
    if st.status not in (StageStatus.WAITING, StageStatus.FAILED):
        raise PipelineError(f"approval of release {state.release_id} is {st.status.value}; links are re-sent only "
                            "while it waits or after it expired or was rejected")
    return publish_replay(ctx, state, stage.id, args.reason, args)


def cmd_chaos(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    optional = [s for s in pipeline.stages if s.optional]
    if not optional:
        raise PipelineError(f"pipeline {pipeline.name} has no optional chaos stage")
    if state.chaos_requested_by:
        raise PipelineError(f"chaos was already requested by {state.chaos_requested_by}")
    if state.status is not ReleaseStatus.AWAITING_APPROVAL:
        raise PipelineError(f"release {state.release_id} is {state.status.value}; chaos can be requested only "
                            "while it awaits approval")
    answer = operator_call(ctx, args, "chaos", {"release_id": state.release_id})
    ctx.print(f"requested chaos: release {state.release_id} (by {answer['requested_by']}, "
              f"message {answer['message_id']})")
    if not args.wait:
        return EXIT_OK
    got = await_release(ctx, state.release_id, args.wait, lambda now: now.chaos_requested_by or None)
    if got is None:
        print(f"relctl: chaos request not taken within {args.wait:g}s (refused, or the dispatcher is not running)",
              file=sys.stderr)
        return EXIT_TIMEOUT
    now, who = got
    st = now.stages[optional[0].id]
    ctx.print(f"accepted: stage {optional[0].id} is {st.status.value} (requested by {who})")
    return EXIT_OK


# -- commands against Cloud Run / IAM / files --------------------------------------
def cmd_rollback(args, ctx: Context) -> int:
    from shared.adapters.executors.registry_rollback import rollback_from_registry, rollback_to_tag
    from shared.adapters.executors.run_services import rollback

    if args.image and not (args.to_tag or args.from_registry):
        print("relctl: --image goes with --to-tag or --from-registry", file=sys.stderr)
        return EXIT_USAGE
    if args.to_tag or args.from_registry:
        moved = (rollback_to_tag(ctx.settings, args.service, args.to_tag, image=args.image) if args.to_tag
                 else rollback_from_registry(ctx.settings, args.service, image=args.image))
        how = f"new revision from {moved['image']}" if moved["created"] else f"existing revision running {moved['image']}"
        ctx.print(f"rolled back {moved['service']}: 100 % to {moved['revision']} ({how}; tag {moved['tag']}, "
                  f"version {moved['version']}, commit {moved['commit']}), was {moved.get('from') or '?'}; "
                  f"operation {moved.get('operation') or '-'}")
        return EXIT_OK
    moved = rollback(ctx.settings, args.service, args.to_revision)
    ctx.print(f"rolled back {moved['service']}: 100 % to {moved['revision']} "
              f"(version {moved.get('version') or '?'}, commit {moved.get('commit') or '?'}), "
              f"was {moved.get('from') or '?'}; operation {moved.get('operation') or '-'}")
    return EXIT_OK


def cmd_validate(args, ctx: Context) -> int:
    from shared.domain.pipeline import load_pipeline

    try:
        pipeline = load_pipeline(args.file)
    except DefinitionError as exc:
        print(f"relctl: invalid pipeline: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stages = ", ".join(f"{s.number} {s.id}" + (" (optional)" if s.optional else "") for s in pipeline.stages)
    ctx.print(f"OK {args.file}: pipeline {pipeline.name}, {len(pipeline.stages)} stages: {stages}")
    ctx.print(f"digest {pipeline.digest}")
    return EXIT_OK


def cmd_preflight(args, ctx: Context) -> int:
    from shared.adapters import gcp_clients
    from shared.adapters.executors.preflight import secret_manager_client, service_account_email
    from shared.domain.pipeline import load_pipeline
    from shared.domain.preflight import SECRET_ACCESSOR_ROLE, check_permissions, format_report, required_roles

    settings = ctx.settings
    pipeline = load_pipeline(args.pipeline or settings.pipeline_file)
    account = args.service_account or os.environ.get("RELEASE_PIPELINE_SERVICE_ACCOUNT", "")
    if not account:
        stage = next((s for s in pipeline.stages if s.kind is StageKind.PREFLIGHT), None)
        if stage is None:
            raise PipelineError(f"pipeline {pipeline.name} has no preflight stage; pass --service-account")
        account = str(stage.params["service_account"])
    account = service_account_email(account, settings.project)
    secrets_client = None
    if not settings.iam_endpoint and SECRET_ACCESSOR_ROLE in required_roles(pipeline):
        secrets_client = secret_manager_client()
    report = check_permissions(gcp_clients.projects(settings), settings.project, account, pipeline, secrets_client)
    ctx.print(format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


# -- parsing and the one place errors become exit codes ------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relctl", description="Operate releases of the release orchestrator.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("list", cmd_list, "list releases, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p = command("show", cmd_show, "show a release: stages with status, attempt, duration, failure reason")
    p.add_argument("release")
    p.add_argument("--json", action="store_true")
    p = command("watch", cmd_watch, "follow a release live; exit 0 when it succeeds, 1 when it stops")
    p.add_argument("release")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (exit 3); 0 = never")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    for name, func, help in (
        ("replay", cmd_replay, "run a stage again (through the operator function)"),
        ("resend-approval", cmd_resend_approval, "send new approval links; the old ones stop working"),
        ("chaos", cmd_chaos, "request the optional chaos smoke (10a) while the release awaits approval"),
    ):
        p = command(name, func, help)
        p.add_argument("release")
        if name == "replay":
            p.add_argument("stage")
            p.add_argument("--reason", required=True, help="why (recorded with the replay)")
        elif name == "resend-approval":
            p.add_argument("--reason", default="approval links re-sent with relctl")
        if name != "chaos":
            p.add_argument("--replay-id", help="idempotency key; the same id is handled once (default: random)")
        p.add_argument("--as", dest="as_", metavar="WHO",
                       help="local stack only: whom its token issuer signs for (default: $RELEASE_OPERATOR_EMAIL); "
                            "on GCP your Google identity is used")
        p.add_argument("--wait", type=float, default=10, metavar="SECONDS",
                       help="wait this long for the dispatcher's answer (0: do not wait)")
    p = command("rollback", cmd_rollback, "move all of a service's traffic to an earlier revision")
    p.add_argument("service")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--to-revision", help="the revision (default: the last ready one deployed from a tag)")
    target.add_argument("--to-tag", metavar="TAG", help="the release tag vX.Y.Z-<sha> to serve; its image is "
                        "deployed from the registry unless a revision still runs it")
    target.add_argument("--from-registry", action="store_true",
                        help="serve the newest release tag in Artifact Registry older than the one served now")
    p.add_argument("--image", help="image name under RELEASE_ARTIFACT_REGISTRY (default: the one the service runs)")
    p = command("validate", cmd_validate, "check a pipeline file; exit 2 naming the stage and field when invalid")
    p.add_argument("file")
    p = command("notes", cmd_notes, "print the release notes (Markdown)")
    p.add_argument("release")
    p = command("preflight", cmd_preflight, "check the pipeline service account's IAM roles")
    p.add_argument("--pipeline", help="pipeline file (default: RELEASE_PIPELINE_FILE)")
    p.add_argument("--service-account", help="default: $RELEASE_PIPELINE_SERVICE_ACCOUNT, else the preflight stage's")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, Context())
    except KeyboardInterrupt:
        print("relctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one line, never a traceback; the debug switch shows it
        if os.environ.get("RELCTL_DEBUG"):
            raise
        message, code = describe_error(exc)
        print(f"relctl: {message}", file=sys.stderr)
        return code


def describe_error(exc: Exception) -> tuple[str, int]:
    from concurrent.futures import TimeoutError as FutureTimeout

    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    one_line = " ".join(str(exc).split())
    if isinstance(exc, DefinitionError):
        return f"invalid pipeline: {one_line}", EXIT_USAGE
    if isinstance(exc, ReleaseNotFound):
        return f"error: {one_line}", EXIT_FAILED
    if isinstance(exc, PipelineError):
        return f"error: {one_line}", EXIT_FAILED
    if isinstance(exc, gexc.GoogleAPIError):
        detail = " ".join(str(getattr(exc, "message", "") or exc).split())
        return f"error: Google API call failed: {type(exc).__name__}: {detail[:300]}", EXIT_FAILED
    if isinstance(exc, auth_exc.GoogleAuthError):
        return ("error: no Google credentials (set FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST for the "
                f"emulators, or run `gcloud auth application-default login`): {one_line[:200]}"), EXIT_FAILED
    if isinstance(exc, FutureTimeout):
        return "error: Pub/Sub did not confirm the publish within 30 s", EXIT_FAILED
    if isinstance(exc, OSError):
        return f"error: {type(exc).__name__}: {one_line[:300]}", EXIT_FAILED
    return f"unexpected error: {type(exc).__name__}: {one_line[:300]} (RELCTL_DEBUG=1 shows the traceback)", EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
