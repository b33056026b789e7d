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
import json
from dataclasses import asdict
import os
import sys
import time

from shared.domain.errors import DefinitionError, PipelineError
from shared.ui.cli_context import (positive_int, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE,
                                   CommandFailed, Context, UsageError)
from shared.ui.cli_format import EPILOG, dumps, iso_times, paint
from shared.ui.cli_operator import add_commands as add_operator_commands
from shared.ui.notes import (duration_text, iso, live_lines, load_release, render, timeline_text,
                             traffic_decisions, rollback_lines)
from shared.adapters import gcp_clients
from shared.adapters.cloud_run_reader import CloudRunServiceReader
from shared.app.where import what_runs_where
from shared.domain.pipeline import Pipeline, load_pipeline
from shared.domain.preflight import (SECRET_ACCESSOR_ROLE, check_permissions, format_report, pipeline_account,
                                     required_roles)
from shared.ui.dashboard import (queued_text, release_json, release_summary, stage_detail,
                                 timeline_with_freezes)
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus

ACTIVE_STAGE = (StageStatus.RUNNING, StageStatus.WAITING, StageStatus.QUEUED)


# -- read-only views --------------------------------------------------------------
def current_stage(state: ReleaseState) -> str:
    for stage_id, st in state.stages.items():
        if st.status in ACTIVE_STAGE:
            return stage_id
    return state.stopped_at_stage


def show_text(state: ReleaseState, pipeline: Pipeline, colour: bool = False, progress: dict | None = None,
              local: bool = False, now: float | None = None) -> str:
    lines = [
        f"release {state.release_id}  {paint(state.status.value, state.status.value, colour)}",
        f"  {state.repo} {state.ref} @ {state.commit}",
        f"  version {state.version}  tag {state.tag}  pushed by {state.pushed_by}  created {iso(state.created_at)}",
    ]
    if progress and progress.get("text"):
        lines.append(f"  progress: {progress['text']}")
    if progress and progress.get("freeze_text"):
        lines.append(f"  FROZEN: {progress['freeze_text']}")
    if progress and progress.get("stalled_text"):
        lines.append(f"  NOTICE: {progress['stalled_text']}")
    if progress and progress.get("github_text"):
        lines.append(f"  {progress['github_text']}")
    if state.waiting_for:
        lines.append(f"  {queued_text(state, progress)}")
    if state.reason and state.status in (ReleaseStatus.SUPERSEDED, ReleaseStatus.CANCELLED):
        lines.append(f"  {state.reason}")
    elif state.reason:
        lines.append(f"  stopped at {state.stopped_at_stage}: {state.reason}")
    if state.approval.get("approver"):
        lines.append(f"  approved by {state.approval['approver']} at {iso(state.approval.get('at'))}"
                     + (f" ({state.approval['reason']})" if state.approval.get("reason") else ""))
    traffic = [f"{d['percent']} % at {iso(d['at'])}"
               + (f" (rolled back at {iso(d['rolled_back_at'])})" if d["rolled_back_at"] else "")
               for d in traffic_decisions(state, pipeline)]
    if traffic:
        lines.append("  traffic: " + "; ".join(traffic))
    lines += [f"  {line}" for line in rollback_lines(state, pipeline)]
    lines += [f"  {line}" for line in live_lines(state, pipeline, time.time() if now is None else now, local)]
    timeline = timeline_with_freezes(state, progress)
    if timeline:
        lines.append("  timeline:")
        lines += [f"    {timeline_text(e)}" for e in timeline]
    lines.append("")
    lines.append(f"  {'#':<4} {'STAGE':<18} {'STATUS':<10} {'ATTEMPT':<7} {'DURATION':<9} DETAIL")
    for stage in pipeline.stages:
        st = state.stages[stage.id]
        detail = stage_detail(stage, st, state, pipeline).replace("\n", " ")
        if st.status is StageStatus.QUEUED and stage.environment == "prod" and (progress or {}).get("freeze_text"):
            detail = "queued: prod is frozen"
        lines.append(f"  {stage.number:<4} {stage.id:<18} {paint(f'{st.status.value:<10}', st.status.value, colour)} {st.attempt:<7} "
                     f"{duration_text(st.duration_s):<9} {detail}".rstrip())
    return "\n".join(lines)


def cmd_list(args, ctx: Context) -> int:
    states = ctx.store.list_releases(args.limit)
    if ctx.json:
        ctx.print(dumps([release_summary(s) for s in states]))
        return EXIT_OK
    if not states:
        ctx.print("no releases")
        return EXIT_OK
    ctx.print(f"{'RELEASE':<36} {'STATUS':<18} {'TAG':<22} {'STAGE':<16} CREATED")
    for s in states:
        ctx.print(f"{s.release_id:<36} {paint(f'{s.status.value:<18}', s.status.value, ctx.colour)} {s.tag:<22} {current_stage(s) or '-':<16} {iso(s.created_at)}")
    return EXIT_OK


def cmd_show(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    if ctx.json:
        ctx.print(dumps(release_json(state, pipeline, ctx.progress(state, pipeline))))
    else:
        ctx.print(show_text(state, pipeline, ctx.colour, ctx.progress(state, pipeline), ctx.local))
    return EXIT_OK


def cmd_notes(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    if ctx.json:
        ctx.print(dumps({"release_id": state.release_id, "markdown": render(state, pipeline)}))
    else:
        ctx.out.write(render(state, pipeline))
    return EXIT_OK


def cmd_watch(args, ctx: Context) -> int:
    """Redraw on every change (a terminal) or print one line per stage change (a pipe)."""
    redraw = ctx.out.isatty() and not ctx.json
    deadline = ctx.monotonic() + args.timeout if args.timeout else None
    last_view, seen = "", {}
    last_said = ctx.monotonic()
    while True:
        state, pipeline = load_release(ctx.store, args.release)
        if redraw:
            view = show_text(state, pipeline, ctx.colour, ctx.progress(state, pipeline), ctx.local)
            if view != last_view:
                ctx.out.write("\x1b[H\x1b[2J" + view + "\n")
                ctx.out.flush()
                last_view = view
        else:
            changes = _changes(state, pipeline, seen)
            for change, line in changes:
                _line(ctx, change, paint(line, change["status"], ctx.colour))
            p = ctx.progress(state, pipeline) if not state.status.terminal else {}
            if changes and p:
                _line(ctx, {"release_id": state.release_id, "progress": p}, f"  progress: {p['text']}")
            stalled = p.get("stalled_text", "")
            if stalled and not seen.get("stalled"):
                seen["stalled"] = True
                _line(ctx, {"release_id": state.release_id, "notice": stalled}, f"  NOTICE: {stalled}")
            if changes:
                last_said = ctx.monotonic()
            # A bake or an approval records nothing for minutes: say where it stands, on a change
            # (an approval that starts waiting) and every --every seconds while nothing changes.
            quiet = ctx.monotonic() - last_said >= args.every
            if p and (changes or quiet):
                live = live_lines(state, pipeline, time.time(), ctx.local)
                for line in live:
                    _line(ctx, {"release_id": state.release_id, "live": line}, f"  {line}")
                if quiet and not changes:
                    _line(ctx, {"release_id": state.release_id, "progress": p}, f"  progress: {p['text']}")
                last_said = ctx.monotonic()
        final = {"release_id": state.release_id, "final": True, "status": state.status.value, "reason": state.reason}
        if state.status is ReleaseStatus.SUCCEEDED:
            _line(ctx, final, f"release {state.release_id} succeeded: {state.tag} takes all traffic")
            return EXIT_OK
        if state.status is ReleaseStatus.STOPPED:
            _line(ctx, final, f"release {state.release_id} stopped: {state.reason}")
            return EXIT_FAILED
        if state.status is ReleaseStatus.CANCELLED:
            _line(ctx, final, f"release {state.release_id} was {state.reason}")
            return EXIT_FAILED
        if state.status is ReleaseStatus.SUPERSEDED:
            _line(ctx, final, f"release {state.release_id} was {state.reason or 'superseded by a newer release'}")
            return EXIT_FAILED
        if deadline is not None and ctx.monotonic() >= deadline:
            raise CommandFailed(f"release {state.release_id} still {state.status.value} after {args.timeout:g}s",
                                EXIT_TIMEOUT)
        ctx.sleep(args.interval)


def _line(ctx: Context, data: dict, text: str) -> None:
    """watch prints one JSON object per line (JSON Lines) under --json, so a pipe can follow it."""
    ctx.print(json.dumps(iso_times(data), sort_keys=True) if ctx.json else text)


def _changes(state: ReleaseState, pipeline: Pipeline, seen: dict) -> list[tuple[dict, str]]:
    """What changed since the last look, each as (JSON record, text line)."""
    lines = []
    if seen.get("") != state.status:
        seen[""] = state.status
        lines.append(({"release_id": state.release_id, "status": state.status.value, "at": state.updated_at},
                      f"release {state.release_id} {state.status.value}"))
    for stage in pipeline.stages:
        st = state.stages[stage.id]
        key = (st.status, st.attempt)
        if seen.get(stage.id, (StageStatus.PENDING, 0)) == key:
            continue
        seen[stage.id] = key
        took = f" in {duration_text(st.duration_s)}" if st.duration_s is not None else ""
        why = f": {st.reason}" if st.reason else ""
        lines.append(({"release_id": state.release_id, "stage": stage.id, "status": st.status.value,
                       "attempt": st.attempt, "started_at": st.started_at, "finished_at": st.finished_at,
                       "duration_s": st.duration_s, "reason": st.reason},
                      f"  [{stage.number:>3}] {stage.id:<18} {st.status.value} (attempt {st.attempt}){took}{why}"))
    return lines


# -- commands against IAM / files -----------------------------------------------------
def cmd_validate(args, ctx: Context) -> int:
    try:
        pipeline = load_pipeline(args.file)
        if not pipeline.repositories:
            # A stored definition may lack it (older releases); a file to deploy may not: the push
            # function releases a repository's pushes only with the pipeline that lists it.
            raise DefinitionError(f"{args.file}: repositories: must list at least one GitHub repository "
                                  "'owner/name' whose pushes release this pipeline (a push of a repository "
                                  "no pipeline lists is refused)")
    except DefinitionError as exc:
        print(f"relctl: invalid pipeline: {exc}", file=sys.stderr)
        if ctx.json:
            ctx.print(dumps({"file": args.file, "valid": False, "error": str(exc), "exit": EXIT_USAGE}))
        return EXIT_USAGE
    stages = ", ".join(f"{s.number} {s.id}" + (" (optional)" if s.optional else "") for s in pipeline.stages)
    ctx.emit({"file": args.file, "valid": True, "exit": EXIT_OK, "pipeline": pipeline.name, "digest": pipeline.digest,
              "stages": [{"number": s.number, "id": s.id, "kind": s.kind.value, "optional": s.optional}
                         for s in pipeline.stages]},
             f"OK {args.file}: pipeline {pipeline.name}, {len(pipeline.stages)} stages: {stages}\ndigest {pipeline.digest}")
    return EXIT_OK


def cmd_preflight(args, ctx: Context) -> int:
    # Here, not at the top: it imports google.auth, which only preflight needs (relctl's start-up).
    from shared.adapters.executors.preflight import secret_manager_client, service_account_email

    settings = ctx.settings
    pipeline = load_pipeline(args.pipeline or settings.pipeline_file)
    account = args.service_account or pipeline_account(pipeline, settings.pipeline_service_account)
    if not account:
        raise PipelineError(f"pipeline {pipeline.name} names no pipeline service account (no preflight stage, "
                            "RELEASE_PIPELINE_SERVICE_ACCOUNT unset); pass --service-account")
    account = service_account_email(account, settings.project)
    secrets_client = None
    if not settings.iam_endpoint and SECRET_ACCESSOR_ROLE in required_roles(pipeline):
        secrets_client = secret_manager_client()
    report = check_permissions(gcp_clients.projects(settings), settings.project, account, pipeline, secrets_client)
    ctx.emit({"ok": report.ok, "service_account": report.service_account, "missing": report.missing,
              "extra": report.extra, "checked_roles": report.checked_roles, "notes": report.notes},
             format_report(report))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_where(args, ctx: Context) -> int:
    """What runs where: per environment, each service's serving revisions (the Cloud Run API now)
    and the release that put each there (the release records)."""
    pipeline = load_pipeline(args.pipeline or ctx.settings.pipeline_file)
    placements = what_runs_where(pipeline, CloudRunServiceReader(ctx.settings), ctx.store.list_releases(200))
    lines, environment = [f"{pipeline.name}"], None
    for p in placements:
        if p.environment != environment:
            environment = p.environment
            lines.append(f"  {environment}")
        r = p.serving
        lines.append(f"    {p.service:<20} {r.revision:<28} {r.percent:>3} %"
                     + (f"  tag {r.tag}" if r.tag else "")
                     + f"  version {r.version or '?'}  commit {r.commit or '?'}  since {iso(p.since) or '?'}"
                     + (f"  by release {p.release_id} ({p.stage})" if p.release_id else "  by no release we know")
                     + f"\n      image {r.image or '?'}")
    if not placements:
        lines.append("  no service of this application serves anything yet")
    ctx.emit({"app": pipeline.name, "placements": [{**asdict(p), "serving": asdict(p.serving)} for p in placements]},
             "\n".join(lines))
    return EXIT_OK


# -- parsing and the one place errors become exit codes ------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relctl", description="Operate releases of the release orchestrator.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"relctl {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON (times in ISO 8601 UTC) instead of text")
        return p

    p = command("list", cmd_list, "list releases, newest first")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many (1-500, default 20)")
    p = command("show", cmd_show, "show a release: stages with status, attempt, duration, failure reason")
    p.add_argument("release")
    p = command("watch", cmd_watch, "follow a release live; exit 0 when it succeeds, 1 when it stops")
    p.add_argument("release")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (exit 3); 0 = never")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--every", type=float, default=30, metavar="SECONDS",
                   help="while nothing changes (a bake, an approval), say where the release stands this often "
                        "(default 30)")
    add_operator_commands(command)
    p = command("validate", cmd_validate, "check a pipeline file; exit 2 naming the stage and field when invalid")
    p.add_argument("file")
    p = command("notes", cmd_notes, "print the release notes (Markdown)")
    p.add_argument("release")
    p = command("where", cmd_where, "what runs where: per environment, each service's serving revisions, "
                "version, commit, image, share, since when and by which release")
    p.add_argument("--pipeline", help="the application's pipeline file (default: RELEASE_PIPELINE_FILE)")
    p = command("preflight", cmd_preflight, "check the pipeline service account's IAM roles")
    p.add_argument("--pipeline", help="pipeline file (default: RELEASE_PIPELINE_FILE)")
    p.add_argument("--service-account", help="default: the preflight stage's, else $RELEASE_PIPELINE_SERVICE_ACCOUNT")
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed  # 0.1 s of start-up otherwise

    try:
        return installed("release-orchestrator")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context(json=args.json)
    try:
        return args.func(args, ctx)
    except KeyboardInterrupt:
        print("relctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`relctl list | head -1`): what it read is all it wanted. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # one line, never a traceback; the debug switch shows it
        if os.environ.get("RELCTL_DEBUG"):
            raise
        message, code = describe_error(exc)
        if isinstance(exc, UsageError):
            print(f"{build_parser().prog} {args.command}: error: {message}", file=sys.stderr)
        elif isinstance(exc, DefinitionError):
            print(f"relctl: invalid pipeline: {message}", file=sys.stderr)
        else:
            print(f"relctl: error: {message}", file=sys.stderr)
        if ctx.json:  # one line, so it also ends watch's JSON Lines
            ctx.print(json.dumps({"error": message, "exit": code}, sort_keys=True))
        return code


def describe_error(exc: Exception) -> tuple[str, int]:
    from concurrent.futures import TimeoutError as FutureTimeout  # 0.1 s of start-up otherwise

    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    one_line = " ".join(str(exc).split())
    if isinstance(exc, CommandFailed):
        return one_line, exc.exit_code
    if isinstance(exc, (UsageError, DefinitionError)):
        return one_line, EXIT_USAGE
    if isinstance(exc, PipelineError):
        return one_line, EXIT_FAILED
    if isinstance(exc, gexc.GoogleAPIError):
        detail = " ".join(str(getattr(exc, "message", "") or exc).split())
        return f"Google API call failed: {type(exc).__name__}: {detail[:300]}", EXIT_FAILED
    if isinstance(exc, auth_exc.GoogleAuthError):
        return ("no Google credentials (set FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST for the "
                f"emulators, or run `gcloud auth application-default login`): {one_line[:200]}"), EXIT_FAILED
    if isinstance(exc, FutureTimeout):
        return "Pub/Sub did not confirm the publish within 30 s", EXIT_FAILED
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {one_line[:300]}", EXIT_FAILED
    return f"unexpected {type(exc).__name__}: {one_line[:300]} (RELCTL_DEBUG=1 shows the traceback)", EXIT_FAILED

if __name__ == "__main__":
    sys.exit(main())
