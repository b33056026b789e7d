"""A dispatch instance that the fault tests kill with SIGKILL at a chosen point.

    python -m tests.faults.dispatcher_runner --project P --prefix X --endpoint HOST:PORT \
        --event-id ID --payload JSON --stop-at {before-write,after-write,after-start}

It builds the real Dispatcher over the Firestore emulator (FIRESTORE_EMULATOR_HOST) with
the real CloudBuildExecutor against the stand-in, handles one message, and at the
chosen point prints a marker line and blocks, so the test can kill it right there:

* before-write: the first conditional write of the release is about to happen;
* after-write:  the state (with its outbox batch) is written, no command carried out;
* after-start:  the build was created on the stand-in, the batch not yet removed.
"""
from __future__ import annotations

import argparse
import sys
import time

from tests.faults import rig


def block(marker: str) -> None:
    print(marker, flush=True)
    while True:  # until SIGKILL
        time.sleep(60)


class StopBeforeWrite:
    def __init__(self, inner):
        self.inner = inner

    def update(self, state, token):
        block(f"MARK before-write {state.release_id}")

    def __getattr__(self, name):
        return getattr(self.inner, name)


class StopAround:
    def __init__(self, inner, after_start: bool):
        self.inner, self.after_start = inner, after_start

    def start(self, pipeline, stage, command):
        if not self.after_start:
            block(f"MARK after-write {command.stage_run_id}")
        result = self.inner.start(pipeline, stage, command)
        block(f"MARK after-start {command.stage_run_id} {result.handle.get('build_id', '')}")

    def poll(self, pipeline, stage, state):
        return self.inner.poll(pipeline, stage, state)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    for name in ("--project", "--prefix", "--endpoint", "--event-id", "--payload", "--stop-at"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    settings = rig.settings_for(args.project, args.prefix, args.endpoint)
    store = rig.firestore_store(args.project, settings)
    executor = rig.build_executor(settings)
    if args.stop_at == "before-write":
        store = StopBeforeWrite(store)
    else:
        executor = StopAround(executor, after_start=args.stop_at == "after-start")
    dispatcher = rig.dispatcher(store, {"build": executor}, settings)
    print("READY", flush=True)
    dispatcher.handle_message(args.event_id, {}, args.payload.encode())
    print("DONE without reaching the stop point", flush=True)
    return 3


if __name__ == "__main__":
    sys.exit(main())
