"""Interval jobs inside the daemon's event loop.

Each job runs at start and then every `interval` seconds, never overlapping itself,
bounded by a timeout. A failure is logged and counted and the loop goes on. `run_now`
serves RunTask; `poke` asks for an early run (after a ban through D-Bus, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from bangui_daemon.errors import Busy, NotFound, quote
from bangui_daemon.events import EventHub, TaskFinished
from bangui_daemon.models import JobInfo, TaskResult

log = structlog.get_logger(__name__)

TaskFunction = Callable[[], Coroutine[Any, Any, TaskResult]]
StatusListener = Callable[[str, str, str], None]  # name, status, error ("" when ok)

OK, FAILED, TIMEOUT = "ok", "failed", "timeout"


@dataclass
class Job:
    """One registered task and what is known of its runs."""

    name: str
    interval: float
    run: TaskFunction
    timeout: float
    quiet: bool = False  # frequent jobs log at debug, not info
    running: bool = False
    last_run: float = 0.0
    last_status: str = ""
    next_run: float = 0.0
    runs: int = 0
    failures: int = 0
    last_duration: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    current: asyncio.Task[TaskResult] | None = None


class Scheduler:
    """Runs registered jobs until `stop()`."""

    def __init__(self, hub: EventHub, on_status: StatusListener | None = None) -> None:
        self._hub = hub
        self._on_status = on_status
        self._jobs: dict[str, Job] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    def add(
        self, name: str, interval: float, run: TaskFunction, *, timeout: float, quiet: bool = False
    ) -> None:
        """Register a job; call before `start()`."""
        if name in self._jobs:
            raise ValueError(f"job {name} is registered twice")
        self._jobs[name] = Job(name, interval, run, timeout, quiet)

    def names(self) -> list[str]:
        """Return the registered job names."""
        return list(self._jobs)

    def set_interval(self, name: str, interval: float) -> None:
        """Change a job's interval (config reload); the next run is rescheduled."""
        job = self._job(name)
        job.interval = interval
        job.next_run = min(job.next_run, time.time() + interval)
        job.wake.set()

    def start(self) -> None:
        """Start one loop per job; each job's first run happens now."""
        now = time.time()
        for job in self._jobs.values():
            job.next_run = now
            self._loops.append(asyncio.create_task(self._loop(job), name=f"job-{job.name}"))

    async def stop(self) -> None:
        """Cancel every loop and running job and wait for them to end."""
        self._stopping = True
        running = [job.current for job in self._jobs.values() if job.current is not None]
        for task in running:
            task.cancel()
        for loop in self._loops:
            loop.cancel()
        # the jobs too: the archive and the fail2ban socket close right after this
        await asyncio.gather(*self._loops, *running, return_exceptions=True)
        self._loops.clear()

    def poke(self, name: str) -> None:
        """Ask for an early run of `name`; a running job runs again right after."""
        job = self._jobs.get(name)
        if job is not None:
            job.next_run = time.time()
            job.wake.set()

    def info(self) -> list[JobInfo]:
        """Return what ListTasks shows."""
        return [
            JobInfo(
                name=j.name,
                interval=j.interval,
                running=j.running,
                last_run=int(j.last_run),
                last_status=j.last_status,
                next_run=int(j.next_run),
                runs=j.runs,
                failures=j.failures,
                last_duration=j.last_duration,
            )
            for j in self._jobs.values()
        ]

    async def run_now(self, name: str) -> tuple[str, TaskResult]:
        """Run `name` now and return (status, result); Busy while it already runs."""
        job = self._job(name)
        if job.running:
            raise Busy(f"task {name} is already running")
        status, result = await self._run_once(job)
        job.next_run = time.time() + job.interval
        return status, result

    def _job(self, name: str) -> Job:
        try:
            return self._jobs[name]
        except KeyError:
            raise NotFound(f"unknown task name {quote(name)}") from None

    async def _loop(self, job: Job) -> None:
        while not self._stopping:
            delay = job.next_run - time.time()
            if delay > 0:
                job.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(job.wake.wait(), delay)
                continue
            if job.running:  # a RunTask call is running it; wait for the next slot
                job.next_run = time.time() + job.interval
                continue
            await self._run_once(job)
            if job.next_run <= job.last_run:  # not poked while running
                job.next_run = job.last_run + job.interval

    async def _run_once(self, job: Job) -> tuple[str, TaskResult]:
        job.running = True
        job.last_run = time.time()
        started = time.monotonic()
        job.current = asyncio.create_task(job.run(), name=f"run-{job.name}")
        result: TaskResult = {}
        try:
            result = await asyncio.wait_for(asyncio.shield(job.current), job.timeout)
            status = OK
        except TimeoutError:
            job.current.cancel()
            await asyncio.gather(job.current, return_exceptions=True)
            status = TIMEOUT
            result = {"error": f"timed out after {job.timeout:g} s"}
            log.error("task_timed_out", task=job.name, timeout=job.timeout)
        except asyncio.CancelledError:
            if not job.current.cancelling():  # cancelling twice would cut its cleanup short
                job.current.cancel()
            await asyncio.gather(job.current, return_exceptions=True)
            raise
        except Exception as exc:
            status = FAILED
            result = {"error": str(exc) or type(exc).__name__}
            log.exception("task_failed", task=job.name, error=result["error"])
        finally:
            job.running = False
            job.current = None
        job.runs += 1
        if status != OK:
            job.failures += 1
        elapsed = time.monotonic() - started
        job.last_duration = elapsed
        job.last_status = status
        if status == OK:
            (log.debug if job.quiet else log.info)(
                "task_finished", task=job.name, seconds=round(elapsed, 3)
            )
        if self._on_status is not None:
            self._on_status(job.name, status, str(result.get("error", "")))
        details = {**result, "duration_ms": int(elapsed * 1000)}
        self._hub.publish(TaskFinished(job.name, status, details))
        return status, result
