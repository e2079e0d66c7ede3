"""Small shared helpers: the repo root, the harness error, the tests' polling with a
deadline, stopping a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


class HarnessError(RuntimeError):
    """A test-environment piece (fail2ban, bus, daemon, users) misbehaved."""


class HarnessTimeoutError(HarnessError, TimeoutError):
    """A condition did not become true before its deadline."""


def _pauses(timeout: float, what: str, interval: float, max_interval: float) -> Iterator[float]:
    """The pauses between two probes, growing from ``interval`` to ``max_interval``:
    cheap for events that arrive in milliseconds, gentle for ones that take seconds.
    Past the deadline it raises HarnessTimeoutError instead."""
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HarnessTimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        yield min(delay, remaining)
        delay = min(delay * 1.5, max_interval)


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns a truthy value; return it or raise HarnessTimeoutError."""
    pauses = _pauses(timeout, what, interval, max_interval)
    while True:
        value = probe()
        if value:
            return value
        time.sleep(next(pauses))


async def await_until(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,  # noqa: ASYNC109 - the twin of wait_until's, same meaning
    what: str,
    *,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> T:
    """`wait_until` for a coroutine probe, pausing with the event loop running."""
    pauses = _pauses(timeout, what, interval, max_interval)
    while True:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(next(pauses))


def stop_process(
    proc: subprocess.Popen[Any],
    timeout: float = 10.0,
    *,
    sig: int | None = signal.SIGTERM,
    group: bool = False,
) -> int | None:
    """Stop a child: ``sig`` (None: it is ending already), ``timeout`` seconds to exit,
    then SIGKILL; reap it and return its exit code. ``group``: signal its whole process
    group (a child started with ``start_new_session``)."""

    def send(signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)

    if proc.poll() is None:
        if sig is not None:
            send(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


class StartedOnEnter:
    """A harness piece used as ``with Piece(...) as piece``: started on the way in
    unless running already (and closed again when that start fails: ``__exit__`` does
    not run when ``__enter__`` raises), closed on the way out."""

    @property
    def running(self) -> bool:
        return False

    def start(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        if not self.running:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
