"""Small shared helpers: the repo root, the harness error, polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


class HarnessError(RuntimeError):
    """A test-environment piece (fail2ban, bus, daemon, users) misbehaved."""


class HarnessTimeoutError(HarnessError, TimeoutError):
    """A condition did not become true before its deadline."""


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    max_interval: float = 0.2,
) -> T:
    """Poll ``probe`` until it returns a truthy value; return it or raise HarnessTimeoutError.

    The interval grows from ``interval`` to ``max_interval``: cheap for events that
    arrive in milliseconds, gentle for ones that take seconds.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = probe()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HarnessTimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, max_interval)


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
