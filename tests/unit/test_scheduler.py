"""The Scheduler on its own: when jobs run, how runs end, and what is reported.

Jobs are coroutines driven by asyncio events, so each test decides when a run starts
and ends; intervals are an hour unless a test is about intervals, so nothing runs
that the test did not cause. Durations come from a fake monotonic clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace

import pytest

from bangui_daemon.errors import Busy, NotFound
from bangui_daemon.events import Event, EventHub, TaskFinished
from bangui_daemon.models import JobInfo, TaskResult
from bangui_daemon.tasks import scheduler as scheduler_module
from bangui_daemon.tasks.scheduler import FAILED, OK, TIMEOUT, Scheduler

HOUR = 3600.0
DEADLINE = 5.0  # generous: the machine may be loaded; a passing test takes milliseconds


class Recorder:
    """The hub's only subscriber and the status listener: what the scheduler told."""

    def __init__(self) -> None:
        self.hub = EventHub()
        self.events: list[Event] = []
        self.statuses: list[tuple[str, str]] = []
        self._changed = asyncio.Event()
        self.hub.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    def on_status(self, name: str, status: str, _error: str = "") -> None:
        self.statuses.append((name, status))

    def finished(self, name: str) -> list[TaskFinished]:
        return [e for e in self.events if isinstance(e, TaskFinished) and e.name == name]

    async def wait_finished(self, name: str, count: int) -> list[TaskFinished]:
        """Wait until `name` has finished `count` runs; fail after DEADLINE."""
        async with asyncio.timeout(DEADLINE):
            while len(self.finished(name)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.finished(name)


class Job:
    """A job whose runs the test starts and ends: each run waits for `release`."""

    def __init__(self, *, blocking: bool = False) -> None:
        self.blocking = blocking
        self.started = 0
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.cleaned_up = 0
        self.running = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_next: Exception | None = None

    async def run(self) -> TaskResult:
        self.started += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.running.set()
        try:
            if self.blocking:
                await self.release.wait()
                self.release.clear()
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        else:
            return {"run": self.started}
        finally:
            self.active -= 1
            self.running.clear()
            if self.cancelled:
                await asyncio.sleep(0.01)  # cleanup that takes a moment (a ROLLBACK, say)
                self.cleaned_up += 1


@pytest.fixture
async def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def make(rec: Recorder) -> AsyncIterator[Callable[[], Scheduler]]:
    made: list[Scheduler] = []

    def factory() -> Scheduler:
        sched = Scheduler(rec.hub, rec.on_status)
        made.append(sched)
        return sched

    yield factory
    for sched in made:
        await sched.stop()


async def wait_running(job: Job) -> None:
    async with asyncio.timeout(DEADLINE):
        await job.running.wait()


def info(sched: Scheduler, name: str) -> JobInfo:
    (found,) = (i for i in sched.info() if i.name == name)
    return found


async def test_every_job_runs_once_at_start(rec: Recorder, make: Callable[[], Scheduler]) -> None:
    sched = make()
    a, b = Job(), Job()
    sched.add("a", HOUR, a.run, timeout=60)
    sched.add("b", HOUR, b.run, timeout=60)
    before = time.time()
    sched.start()
    await rec.wait_finished("a", 1)
    await rec.wait_finished("b", 1)
    assert (a.started, b.started) == (1, 1)
    ia = info(sched, "a")
    assert (ia.runs, ia.failures, ia.last_status) == (1, 0, OK)
    assert ia.last_run >= int(before)
    assert ia.next_run >= int(before + HOUR) - 1  # the next run is an interval away
    assert sorted(rec.statuses) == [("a", OK), ("b", OK)]


async def test_a_job_is_registered_once() -> None:
    sched = Scheduler(EventHub())
    sched.add("a", HOUR, Job().run, timeout=1)
    with pytest.raises(ValueError, match="registered twice"):
        sched.add("a", HOUR, Job().run, timeout=1)


async def test_task_finished_carries_status_result_and_duration(
    rec: Recorder, make: Callable[[], Scheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(
        scheduler_module, "time", SimpleNamespace(time=time.time, monotonic=lambda: clock[0])
    )

    async def slow() -> TaskResult:
        clock[0] += 2.5  # the run takes 2.5 s of the fake monotonic clock
        return {"new_events": 7}

    sched = make()
    sched.add("sync", HOUR, slow, timeout=60)
    sched.start()
    (finished,) = await rec.wait_finished("sync", 1)
    assert finished.status == OK
    assert finished.details == {"new_events": 7, "duration_ms": 2500}
    assert info(sched, "sync").last_duration == pytest.approx(2.5)


async def test_runs_of_one_job_never_overlap(rec: Recorder, make: Callable[[], Scheduler]) -> None:
    sched = make()
    job = Job(blocking=True)
    sched.add("j", HOUR, job.run, timeout=60)
    sched.start()
    await wait_running(job)
    assert info(sched, "j").running
    # RunTask while the scheduled run is in progress is refused, not queued beside it
    with pytest.raises(Busy, match="already running"):
        async with asyncio.timeout(DEADLINE):
            await sched.run_now("j")
    sched.poke("j")  # a poke while running asks for one more run right after
    sched.poke("j")
    for _ in range(5):
        await asyncio.sleep(0)  # let the loop see the pokes while the run is in progress
    assert job.started == 1
    job.release.set()
    await rec.wait_finished("j", 1)
    await wait_running(job)  # the poked run
    assert job.started == 2
    job.release.set()
    await rec.wait_finished("j", 2)
    assert job.max_active == 1
    assert info(sched, "j").runs == 2


async def test_run_now_returns_the_result_and_reschedules(
    rec: Recorder, make: Callable[[], Scheduler]
) -> None:
    sched = make()
    job = Job()
    sched.add("j", HOUR, job.run, timeout=60)
    sched.start()
    await rec.wait_finished("j", 1)
    before = time.time()
    status, result = await sched.run_now("j")
    assert (status, result) == (OK, {"run": 2})
    assert info(sched, "j").next_run >= int(before + HOUR) - 1
    assert len(rec.finished("j")) == 2  # RunTask's run is announced like any other


async def test_run_now_of_an_unknown_task_is_not_found() -> None:
    sched = Scheduler(EventHub())
    with pytest.raises(NotFound, match="'nope'"):
        await sched.run_now("nope")
    with pytest.raises(NotFound):
        sched.set_interval("nope", 10)
    sched.poke("nope")  # pokes name tasks in code; an unknown one is ignored


async def test_a_run_over_its_timeout_is_cancelled_and_reported(
    rec: Recorder, make: Callable[[], Scheduler]
) -> None:
    sched = make()
    job = Job(blocking=True)
    sched.add("slow", HOUR, job.run, timeout=0.05)
    async with asyncio.timeout(DEADLINE):
        status, result = await sched.run_now("slow")  # not started: only this run
    assert status == TIMEOUT
    assert result == {"error": "timed out after 0.05 s"}
    assert (job.cancelled, job.active) == (1, 0)  # the run itself was stopped
    i = info(sched, "slow")
    assert (i.runs, i.failures, i.last_status, i.running) == (1, 1, TIMEOUT, False)
    (finished,) = rec.finished("slow")
    assert finished.status == TIMEOUT
    assert rec.statuses == [("slow", TIMEOUT)]


async def test_a_failing_job_is_counted_and_the_loop_goes_on(
    rec: Recorder, make: Callable[[], Scheduler]
) -> None:
    sched = make()
    job = Job()
    job.fail_next = RuntimeError("archive is locked")
    sched.add("j", HOUR, job.run, timeout=60)
    sched.start()
    (first,) = await rec.wait_finished("j", 1)
    assert first.status == FAILED
    assert first.details["error"] == "archive is locked"
    i = info(sched, "j")
    assert (i.runs, i.failures, i.last_status) == (1, 1, FAILED)

    sched.poke("j")  # the loop survived the failure and runs the job again
    second = (await rec.wait_finished("j", 2))[1]
    assert second.status == OK
    i = info(sched, "j")
    assert (i.runs, i.failures, i.last_status) == (2, 1, OK)
    assert rec.statuses == [("j", FAILED), ("j", OK)]


async def test_a_nameless_exception_is_reported_by_its_type(
    rec: Recorder, make: Callable[[], Scheduler]
) -> None:
    sched = make()
    job = Job()
    job.fail_next = KeyError()
    sched.add("j", HOUR, job.run, timeout=60)
    status, result = await sched.run_now("j")
    assert (status, result) == (FAILED, {"error": "KeyError"})


async def test_poke_runs_an_idle_job_early(rec: Recorder, make: Callable[[], Scheduler]) -> None:
    sched = make()
    job = Job()
    sched.add("j", HOUR, job.run, timeout=60)
    sched.start()
    await rec.wait_finished("j", 1)
    sched.poke("j")
    await rec.wait_finished("j", 2)
    assert job.started == 2


async def test_set_interval_reschedules_the_next_run(
    rec: Recorder, make: Callable[[], Scheduler]
) -> None:
    sched = make()
    job = Job()
    sched.add("j", HOUR, job.run, timeout=60)
    sched.start()
    await rec.wait_finished("j", 1)
    sched.set_interval("j", 0.01)  # was an hour away; now due almost at once, and again
    await rec.wait_finished("j", 3)
    assert info(sched, "j").interval == 0.01
    finished = len(rec.finished("j"))
    sched.set_interval("j", HOUR)  # back to an hour: after the run due now, none soon
    await rec.wait_finished("j", finished + 1)
    assert info(sched, "j").next_run >= int(time.time() + HOUR) - 60


async def test_stop_cancels_a_running_job_and_waits_for_it(make: Callable[[], Scheduler]) -> None:
    sched = make()
    job = Job(blocking=True)
    idle = Job()
    sched.add("j", HOUR, job.run, timeout=60)
    sched.add("idle", HOUR, idle.run, timeout=60)
    sched.start()
    await wait_running(job)
    async with asyncio.timeout(DEADLINE):
        await sched.stop()
    assert job.cancelled == 1
    # the job's own cleanup has finished when stop() returns: what the daemon closes
    # next (the archive, fail2ban's socket) is no longer in use
    assert job.cleaned_up == 1
    assert job.active == 0
    assert not any(t.get_name().startswith(("job-", "run-")) for t in asyncio.all_tasks())
