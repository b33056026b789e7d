"""The sweeper: reads only due releases, publishes finishes found by polling, ticks for overdue deadlines."""
from __future__ import annotations

from shared.app.config import Settings
from shared.domain.errors import ExecutorError, TransientError
from shared.domain.events import Outcome
from shared.domain.wire import from_payload
from shared.testing.fakes import FakeClock, FakeExecutor, FakePublisher, FakeStore
from shared.domain.pipeline import load_pipeline
from shared.app.ports import StageFinish
from shared.domain.state import ReleaseStatus, StageStatus, new_release
from shared.app.sweeper import sweep
from shared.domain.wake import SAFETY_NET_S, expiry, next_wake

SETTINGS = Settings()
PIPELINE = load_pipeline(SETTINGS.pipeline_file)


def _release(store: FakeStore, clock: FakeClock, commit: str, *, running: str | None = None, deadline_in: float = 600,
             status: ReleaseStatus = ReleaseStatus.RUNNING):
    state = new_release(PIPELINE, repo="acme/noesis2", ref="refs/heads/main", commit=commit, version="1.0.0",
                        pushed_by="dev@example.com", now=clock.now())
    state.status = status
    if running:
        st = state.stages[running]
        st.status = StageStatus.WAITING if status is ReleaseStatus.AWAITING_APPROVAL else StageStatus.RUNNING
        st.attempt = 1
        st.stage_run_id = f"{state.release_id}.{running}.a1"
        st.started_at = clock.now()
        st.deadline = clock.now() + deadline_in
    state.wake_at = next_wake(state, clock.now())  # as the gate sets them on every write
    state.expire_at = expiry(state, clock.now())
    store.create(state)
    return state


def _setup():
    store, clock, publisher = FakeStore(), FakeClock(), FakePublisher()
    store.save_pipeline(PIPELINE)
    executors = {kind: FakeExecutor() for kind in ("build", "job", "deploy", "traffic", "check")}
    return store, clock, publisher, executors


def test_a_finish_found_by_polling_is_published_as_a_valid_event():
    store, clock, publisher, executors = _setup()
    release = _release(store, clock, "a" * 40, running="staging-migrate")
    run_id = release.stages["staging-migrate"].stage_run_id
    executors["job"].poll_results[run_id] = StageFinish(Outcome.FAILED, "exit 3", {"failed_count": 1})
    assert sweep(store, executors, publisher, clock, SETTINGS).releases == 0  # its probes have time first
    clock.advance(SAFETY_NET_S)
    report = sweep(store, executors, publisher, clock, SETTINGS)
    assert report.releases == 1 and report.polled == 1 and report.ticks == []
    (topic, data, _), = publisher.messages
    assert topic == SETTINGS.events_topic
    event = from_payload("m1", data)  # the dispatcher can read what we publish
    assert (event.release_id, event.stage, event.stage_run_id) == (release.release_id, "staging-migrate", run_id)
    assert event.outcome is Outcome.FAILED and event.reason == "exit 3" and event.result == {"failed_count": 1}


def test_still_running_publishes_nothing_until_the_deadline_then_a_tick():
    store, clock, publisher, executors = _setup()
    release = _release(store, clock, "b" * 40, running="staging-migrate", deadline_in=1200)
    assert sweep(store, executors, publisher, clock, SETTINGS).ticks == []
    clock.advance(1200)
    assert publisher.messages == []  # exactly at the deadline is not past it (gate rule)
    clock.advance(1)
    report = sweep(store, executors, publisher, clock, SETTINGS)
    assert report.ticks == [release.release_id]
    assert publisher.of_type("release.tick") == [{"type": "release.tick", "release_id": release.release_id}]


def test_an_expired_approval_gets_a_tick_and_finished_releases_are_skipped():
    store, clock, publisher, executors = _setup()
    waiting = _release(store, clock, "c" * 40, running="approval", deadline_in=60,
                       status=ReleaseStatus.AWAITING_APPROVAL)
    _release(store, clock, "d" * 40, running="lint", deadline_in=-100, status=ReleaseStatus.SUCCEEDED)
    _release(store, clock, "e" * 40, running="lint", deadline_in=-100, status=ReleaseStatus.STOPPED)
    clock.advance(61)
    report = sweep(store, executors, publisher, clock, SETTINGS)
    assert report.releases == 1 and report.ticks == [waiting.release_id]


class _Raising:
    def __init__(self, error: Exception):
        self.error = error

    def start(self, *args):
        raise AssertionError("the sweeper never starts stages")

    def poll(self, pipeline, stage, state):
        raise self.error


def test_transient_poll_errors_are_reported_and_permanent_ones_fail_the_stage():
    store, clock, publisher, executors = _setup()
    first = _release(store, clock, "f" * 40, running="lint")
    clock.advance(1)
    second = _release(store, clock, "0" * 40, running="staging-deploy")
    executors["build"] = _Raising(TransientError("Cloud Build unavailable"))
    executors["deploy"] = _Raising(ExecutorError("missing permission run.services.get"))
    clock.advance(SAFETY_NET_S)
    report = sweep(store, executors, publisher, clock, SETTINGS)
    assert report.errors == ["Cloud Build unavailable"]
    (finished,) = publisher.of_type("stage.finished")
    assert finished["release_id"] == second.release_id and finished["outcome"] == "failed"
    assert "run.services.get" in finished["reason"]
    assert first.release_id not in {m["release_id"] for m in publisher.of_type("stage.finished")}


def test_a_broken_release_does_not_stop_the_others():
    store, clock, publisher, executors = _setup()
    broken = _release(store, clock, "1" * 40, running="lint")
    broken.pipeline_digest = "0" * 64
    store.update(broken, 1)
    clock.advance(1)
    fine = _release(store, clock, "2" * 40, running="lint")
    executors["build"].poll_results[fine.stages["lint"].stage_run_id] = StageFinish(Outcome.SUCCEEDED)
    clock.advance(SAFETY_NET_S)
    report = sweep(store, executors, publisher, clock, SETTINGS)
    assert len(report.errors) == 1 and broken.release_id in report.errors[0]
    assert [m["release_id"] for m in publisher.of_type("stage.finished")] == [fine.release_id]


def test_a_release_waiting_for_approval_costs_no_read_until_its_approval_expires():
    store, clock, publisher, executors = _setup()
    waiting = _release(store, clock, "3" * 40, running="approval", deadline_in=8 * 3600,
                       status=ReleaseStatus.AWAITING_APPROVAL)
    reads = store.reads
    for _ in range(8 * 60):  # eight hours of minute ticks
        clock.advance(60)
        if clock.now() >= waiting.stages["approval"].deadline:
            break
        assert sweep(store, executors, publisher, clock, SETTINGS).releases == 0
    assert store.reads - reads <= 8 * 60  # the empty query itself: one billed read per tick, no documents
    clock.advance(60)
    assert sweep(store, executors, publisher, clock, SETTINGS).ticks == [waiting.release_id]


def test_every_due_release_is_swept_page_after_page_and_then_moves_back():
    store, clock, publisher, executors = _setup()
    ids = []
    for n in range(5):
        ids.append(_release(store, clock, f"{n}{'4' * 39}", running="staging-migrate").release_id)
        clock.advance(1)
    clock.advance(SAFETY_NET_S)
    report = sweep(store, executors, publisher, clock, SETTINGS, page_size=2, workers=3)
    assert (report.releases, report.polled, report.pages) == (5, 5, 3)
    for release_id in ids:  # each got its next wake time: not due again right away
        assert store.get(release_id)[0].wake_at == clock.now() + SAFETY_NET_S
    assert sweep(store, executors, publisher, clock, SETTINGS).releases == 0


def test_out_of_time_the_rest_goes_first_next_time_so_nothing_starves():
    store, clock, publisher, executors = _setup()
    ids = []
    for n in range(6):
        ids.append(_release(store, clock, f"{n}{'5' * 39}", running="staging-migrate").release_id)
        clock.advance(1)
    clock.advance(SAFETY_NET_S)
    swept = []
    for _ in range(3):
        report = sweep(store, executors, publisher, clock, SETTINGS, page_size=2, budget_s=-1)
        assert report.out_of_time and report.releases == 2
        swept += [rid for rid in ids if store.get(rid)[0].wake_at > clock.now()]
        clock.advance(1)
    assert sorted(set(swept)) == sorted(ids)


def test_a_stopped_or_finished_release_has_no_wake_time_and_an_expiry():
    store, clock, _, _ = _setup()
    done = _release(store, clock, "6" * 40, status=ReleaseStatus.SUCCEEDED)
    running = _release(store, clock, "7" * 40, running="lint")
    assert done.wake_at is None and done.expire_at == clock.now() + 90 * 24 * 3600
    assert running.expire_at is None and running.wake_at == clock.now() + SAFETY_NET_S
