"""``relctl`` commands that act through the operator function (replay, resend-approval, chaos,
approve, reject, cancel, skip-bake, rollback, freeze, dead letters): the function checks the
caller's Google ID token and records who asked."""
from __future__ import annotations

import argparse

from shared.domain.bake_skip import baking_stage
from shared.domain.errors import PipelineError
from shared.domain.pipeline_schema import suggestion
from shared.domain.state import ReleaseState, ReleaseStatus, StageStatus
from shared.ui.cli_context import EXIT_OK, EXIT_TIMEOUT, CommandFailed, Context, UsageError, positive_int
from shared.ui.cli_format import dumps
from shared.ui.notes import iso, load_release
from shared.ui.operator_client import call_operator


def operator_call(ctx: Context, args, action: str, params: dict, request_id: str | None = None) -> dict:
    """Through the operator function, which checks the caller's Google ID token and records who asked."""
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


def ask_and_wait(ctx: Context, args, action: str, params: dict, asked, answered, not_seen, hint: str,
                 request_id: str | None = None):
    """Ask the operator function, say what was asked, then (with --wait) re-read the release until
    ``answered(state, answer)`` finds the gate's answer. Returns ``(answer, (state, found), None)``, or
    ``(answer, None, exit_code)`` when the command is over already: no --wait (the answer printed as
    JSON when asked for), or nothing seen in time (said on stderr)."""
    answer = operator_call(ctx, args, action, params, request_id=request_id)
    if not ctx.json:
        ctx.print(f"requested {asked(answer)} (by {answer['requested_by']}, message {answer['message_id']})")
    if not args.wait:
        if ctx.json:
            ctx.print(dumps(answer))
        return answer, None, EXIT_OK
    got = await_release(ctx, params["release_id"], args.wait, lambda now: answered(now, answer))
    if got is None:
        raise CommandFailed(f"{not_seen(answer)} within {args.wait:g}s ({hint})", EXIT_TIMEOUT)
    return answer, got, None


def publish_replay(ctx: Context, state: ReleaseState, stage: str, reason: str, args) -> int:
    answer, got, done = ask_and_wait(
        ctx, args, "replay", {"release_id": state.release_id, "stage": stage, "reason": reason},
        lambda a: f"replay {a['replay_id']}: release {state.release_id} stage {stage}",
        lambda now, a: next((r for r in now.replays if r.get("replay_id") == a["replay_id"]), None),
        lambda a: f"replay {a['replay_id']} not handled", "is the dispatcher running?", request_id=args.replay_id)
    if done is not None:
        return done
    replay_id = answer["replay_id"]
    now, record = got
    if not record.get("accepted"):
        raise CommandFailed(f"replay {replay_id} refused: {record.get('reason', '')}")
    st = now.stages[stage]
    ctx.emit({**answer, "accepted": True, "stage_status": st.status.value, "attempt": st.attempt,
              "release_status": now.status.value},
             f"accepted: stage {stage} is {st.status.value} (attempt {st.attempt}); release {now.status.value}")
    return EXIT_OK


def cmd_replay(args, ctx: Context) -> int:
    state, pipeline = load_release(ctx.store, args.release)
    if not pipeline.has_stage(args.stage):
        ids = [s.id for s in pipeline.stages]
        raise UsageError(f"release {state.release_id} has no stage {args.stage!r}{suggestion(args.stage, ids)} "
                         f"(stages: {', '.join(ids)})")
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
    answer, got, done = ask_and_wait(
        ctx, args, "chaos", {"release_id": state.release_id}, lambda a: f"chaos: release {state.release_id}",
        lambda now, a: now.chaos_requested_by or None,
        lambda a: "chaos request not taken", "refused, or the dispatcher is not running")
    if done is not None:
        return done
    now, who = got
    st = now.stages[optional[0].id]
    ctx.emit({**answer, "accepted": True, "stage": optional[0].id, "stage_status": st.status.value},
             f"accepted: stage {optional[0].id} is {st.status.value} (requested by {who})")
    return EXIT_OK


def cmd_decide(args, ctx: Context) -> int:
    """``approve`` / ``reject``: the approver's own decision, under the rules of their approval link."""
    approve = args.command == "approve"
    if not approve and not (args.reason or "").strip():
        raise UsageError("reject needs --reason (the pusher reads it)")
    answer = operator_call(ctx, args, args.command, {"release_id": args.release, "reason": args.reason or ""})
    ctx.emit(answer, f"{answer['decision']} release {answer['release_id']} (stage {answer['stage']}, attempt "
                     f"{answer['attempt']}) as {answer['approver']}; the dispatcher applies it next")
    return EXIT_OK


def cmd_cancel(args, ctx: Context) -> int:
    """Stop a release for good; the gate gives back its locks and rolls back a canary it put in prod."""
    state, _ = load_release(ctx.store, args.release)
    if state.status.terminal:
        raise PipelineError(f"release {state.release_id} is {state.status.value}; nothing to cancel")
    answer, got, done = ask_and_wait(
        ctx, args, "cancel", {"release_id": state.release_id, "reason": args.reason},
        lambda a: f"cancel of release {state.release_id}",
        lambda now, a: now if now.status is ReleaseStatus.CANCELLED else None,
        lambda a: "cancel not applied", "is the dispatcher running?")
    if done is not None:
        return done
    now, _ = got
    ctx.emit({**answer, "status": now.status.value, "reason": now.reason},
             f"cancelled: release {now.release_id} is {now.status.value} ({now.reason}); its locks are free")
    return EXIT_OK


def cmd_skip_bake(args, ctx: Context) -> int:
    """An approver ends a running bake early; one more probe judges the bake so far and ends it."""
    state, pipeline = load_release(ctx.store, args.release)
    stage = pipeline.stage(args.stage) if args.stage and pipeline.has_stage(args.stage) else None
    if args.stage and stage is None:
        ids = [s.id for s in pipeline.stages]
        raise UsageError(f"release {state.release_id} has no stage {args.stage!r}{suggestion(args.stage, ids)}")
    stage = stage or baking_stage(pipeline, state)
    if stage is None:
        raise PipelineError(f"release {state.release_id} has no bake running (it is {state.status.value})")
    run = state.stages[stage.id].stage_run_id
    answer, got, done = ask_and_wait(
        ctx, args, "skip-bake", {"release_id": state.release_id, "stage": stage.id, "reason": args.reason or ""},
        lambda a: f"end of the bake of {stage.id}: release {state.release_id}",
        lambda now, a: (now.stages[stage.id] if now.stages[stage.id].stage_run_id != run
                        or now.stages[stage.id].status is not StageStatus.RUNNING else None),
        lambda a: f"the bake of {stage.id} not ended", "the probe asks again each interval while the analysis "
                                                        "cannot judge; relctl show tells")
    if done is not None:
        return done
    now, st = got
    if st.status is not StageStatus.SUCCEEDED:
        raise PipelineError(f"the bake of {stage.id} was not ended early: the stage {st.status.value}: {st.reason}")
    ctx.emit({**answer, "stage_status": st.status.value, "release_status": now.status.value},
             f"ended early: stage {stage.id} succeeded; release {now.status.value}")
    return EXIT_OK


def cmd_rollback(args, ctx: Context) -> int:
    """Guarded: a reason, then what would move (current and target revision, from the operator
    function's dry run), then a confirmation on the terminal or --yes. The function moves the
    traffic, records the move in the service's revision history and on the release that deployed
    it, and answers with the rollout's operation at once."""
    if args.image and not (args.to_tag or args.from_registry):
        raise UsageError("--image goes with --to-tag or --from-registry")
    if not args.reason.strip():
        raise UsageError("a rollback needs --reason (recorded on the release and in the service's history)")
    params = {"service": args.service, "to_revision": args.to_revision or "", "to_tag": args.to_tag or "",
              "from_registry": bool(args.from_registry), "image": args.image or "", "force": bool(args.force),
              "reason": args.reason}
    if not args.yes:
        plan = operator_call(ctx, args, "rollback", {**params, "dry_run": True})
        now = "; ".join(f"{t['revision']} {t['percent']} %" for t in plan.get("before") or []) or "nothing"
        verdict = f", {plan['verdict'].replace('_', ' ')}" if plan.get("verdict") else ""
        ctx.print(f"{plan['service']} serves now: {now}\nrollback sends 100 % to: {plan['revision']} "
                  f"(version {plan.get('version') or '?'}, commit {plan.get('commit') or '?'}{verdict})"
                  + (" FORCED: it never completed a release" if plan.get("forced") else ""))
        if not ctx.confirm("Roll back?"):
            raise CommandFailed("rollback not done: not confirmed (no terminal to ask on? pass --yes in scripts)")
    moved = operator_call(ctx, args, "rollback", params)
    if moved.get("tag"):
        how = f"new revision from {moved['image']}" if moved.get("created") else f"existing revision running {moved['image']}"
        text = (f"rolled back {moved['service']}: 100 % to {moved['revision']} ({how}; tag {moved['tag']}, "
                f"version {moved['version']}, commit {moved['commit']}), was {moved.get('from') or '?'}")
    else:
        text = (f"rolled back {moved['service']}: 100 % to {moved['revision']} (version {moved.get('version') or '?'}, "
                f"commit {moved.get('commit') or '?'}){' FORCED' if moved.get('forced') else ''}, "
                f"was {moved.get('from') or '?'}")
    text += f"; operation {moved.get('operation') or '-'}; by {moved['requested_by']}"
    text += (f"; recorded on release {moved['recorded_on']} (stage {moved['stage']})" if moved.get("recorded_on")
             else f"; no recent release deployed {moved['service']}: kept as operator request {moved['request_id']}")
    ctx.emit(moved, text)
    return EXIT_OK


def cmd_dead_letters(args, ctx: Context) -> int:
    answer = operator_call(ctx, args, "dead-letters", {"limit": args.limit})
    letters = answer["letters"]
    if ctx.json:
        ctx.print(dumps(letters))
        return EXIT_OK
    if not letters:
        ctx.print("no dead letters")
        return EXIT_OK
    for d in letters:
        done = f"  re-driven as {d['redriven_as']}" if d["redriven_as"] else f"  (relctl redrive {d['id']})"
        ctx.print(f"{d['id']}  {iso(d['received_at'])}  {d['type'] or d['source']}  {d['release_id'] or '-'}\n"
                  f"    {d['reason']}\n  {done}")
    return EXIT_OK


def cmd_redrive(args, ctx: Context) -> int:
    answer = operator_call(ctx, args, "redrive", {"letter_id": args.letter})
    ctx.emit(answer, f"re-drove dead letter {answer['letter_id']} as message {answer['message_id']} "
                     f"(by {answer['requested_by']}); the gate decides on it as on any event")
    return EXIT_OK


def cmd_freeze(args, ctx: Context) -> int:
    frozen = args.command == "freeze"
    params = {"reason": args.reason} if frozen else {}
    if args.app:
        params["app"] = args.app
    answer = operator_call(ctx, args, args.command, params)
    text = (f"prod of {answer['app']} is frozen (by {answer['requested_by']}): no release enters prod until "
            f"relctl unfreeze" if frozen else
            f"prod of {answer['app']} is open again" + (f"; {answer['granted_to']} goes on" if answer["granted_to"] else ""))
    ctx.emit(answer, text)
    return EXIT_OK


def add_commands(command) -> None:
    """The parsers of this module's commands; ``command(name, func, help)`` makes one."""
    for name, func, help in (
        ("replay", cmd_replay, "run a stage again (through the operator function)"),
        ("resend-approval", cmd_resend_approval, "send new approval links; the old ones stop working"),
        ("chaos", cmd_chaos, "request the optional chaos smoke (10a) while the release awaits approval"),
        ("approve", cmd_decide, "approve a release that waits for you (as your Google identity)"),
        ("reject", cmd_decide, "reject a release that waits for you, with a reason"),
        ("cancel", cmd_cancel, "stop a release for good: locks given back, prod keeps what served before"),
        ("skip-bake", cmd_skip_bake, "end a running bake early (an approver of the release; recorded)"),
    ):
        p = command(name, func, help)
        p.add_argument("release")
        if name == "replay":
            p.add_argument("stage")
            p.add_argument("--reason", required=True, help="why (recorded with the replay)")
        elif name == "resend-approval":
            p.add_argument("--reason", default="approval links re-sent with relctl")
        elif name == "cancel":
            p.add_argument("--reason", required=True, help="why (recorded on the release's timeline)")
        elif name == "skip-bake":
            p.add_argument("--stage", help="the check whose bake ends (default: the one baking now)")
            p.add_argument("--reason", help="why (recorded on the release's timeline)")
        elif name in ("approve", "reject"):
            p.add_argument("--reason", help="kept with the decision" + ("; required" if name == "reject" else ""))
        if name in ("replay", "resend-approval"):
            p.add_argument("--replay-id", help="idempotency key; the same id is handled once (default: random)")
        p.add_argument("--as", dest="as_", metavar="WHO",
                       help="local stack only: whom its token issuer signs for (default: $RELEASE_OPERATOR_EMAIL); "
                            "on GCP your Google identity is used")
        if name not in ("approve", "reject"):
            p.add_argument("--wait", type=float, default=10, metavar="SECONDS",
                           help="wait this long for the dispatcher's answer (0: do not wait)")
    p = command("rollback", cmd_rollback, "move all of a service's traffic to an earlier revision (recorded on "
                "the release that deployed it)")
    p.add_argument("service")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--to-revision", help="the revision (default: the newest that completed a release and "
                        "does not serve 100 %% now)")
    target.add_argument("--to-tag", metavar="TAG", help="the release tag vX.Y.Z-<sha> to serve; its image is "
                        "deployed from the registry unless a revision still runs it")
    target.add_argument("--from-registry", action="store_true",
                        help="serve the newest release tag in Artifact Registry older than the one served now")
    p.add_argument("--image", help="image name under RELEASE_ARTIFACT_REGISTRY (default: the one the service runs)")
    p.add_argument("--force", action="store_true",
                   help="roll back to a revision that never completed a release (failed a canary, rolled back)")
    p.add_argument("--reason", required=True, help="why (required; recorded on the release and in the history)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts); without it a "
                   "terminal is needed to confirm")
    p.add_argument("--as", dest="as_", metavar="WHO", help=argparse.SUPPRESS)
    p = command("dead-letters", cmd_dead_letters, "list dead letters: messages kept instead of applied, with why")
    p.add_argument("--limit", type=positive_int, default=50, help="at most this many (1-500)")
    p.add_argument("--as", dest="as_", metavar="WHO", help=argparse.SUPPRESS)
    p = command("redrive", cmd_redrive, "publish a dead letter's event again (once); the gate decides on it")
    p.add_argument("letter")
    p.add_argument("--as", dest="as_", metavar="WHO", help=argparse.SUPPRESS)
    for name, help in (("freeze", "pause every new prod stage of an application until unfreeze (recorded)"),
                       ("unfreeze", "lift the freeze; the newest release waiting for prod goes on")):
        p = command(name, cmd_freeze, help)
        p.add_argument("--app", help="the application (pipeline name; default: the operator function's pipeline)")
        if name == "freeze":
            p.add_argument("--reason", required=True, help="why (kept with the freeze)")
        p.add_argument("--as", dest="as_", metavar="WHO", help=argparse.SUPPRESS)
