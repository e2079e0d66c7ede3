"""systemd notifications (READY=1, STATUS=, WATCHDOG=1, ...) over `sdnotify`, typed.

sdnotify has no type hints and either swallows every error or raises all of them
(`debug=True`). We take the raising mode and decide here: without `$NOTIFY_SOCKET`
(not started by systemd, or a test) everything is a silent no-op; a broken socket is
logged once per outage but never stops the daemon. The API is identical in sdnotify
0.3.0/0.3.1 (Debian) and 0.3.2 (PyPI): `SystemdNotifier(debug)` and `.notify(str)`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from typing import Any, Final

import sdnotify

from bangui_daemon.logs import get_logger

__all__ = ["SD_NOTIFY_FAILED", "Notifier", "watchdog_interval"]

SD_NOTIFY_FAILED: Final = "sd_notify_failed"

_log = get_logger()


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return how often to send WATCHDOG=1 in seconds, or None if no watchdog is on.

    Half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends, leaving room for a
    busy loop. `$WATCHDOG_PID` naming another process means the watchdog is not ours
    (we inherited the variables from a parent).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _clean(text: str) -> str:
    """Make *text* one safe STATUS= value.

    A newline would start a new assignment (a jail named "x\\nREADY=1" must not
    signal readiness). sdnotify encodes with latin-1 but systemd expects UTF-8, so
    hand it the UTF-8 bytes spelled as latin-1 characters.
    """
    one_line = " ".join(text.splitlines())
    return one_line.encode("utf-8", "replace").decode("latin-1")


class Notifier:
    """Tell systemd (Type=notify) about readiness, status, liveness and shutdown."""

    def __init__(self) -> None:
        self._sd: Any = None
        self._failing = False
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        try:
            # Connects once, now: $NOTIFY_SOCKET must be set before this point. On
            # failure sdnotify drops its socket unclosed; that ResourceWarning is noise.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                self._sd = sdnotify.SystemdNotifier(debug=True)
        except OSError as exc:
            self._failed(exc)

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is connected (i.e. systemd listens)."""
        return self._sd is not None

    def ready(self, status: str) -> None:
        """Report startup complete (archive migrated, bus name owned)."""
        self._send(f"READY=1\nSTATUS={_clean(status)}")

    def status(self, text: str) -> None:
        """Show *text* in `systemctl status`."""
        self._send(f"STATUS={_clean(text)}")

    def extend_startup(self, seconds: int, status: str) -> None:
        """Ask systemd for `seconds` more before TimeoutStartSec kills a long startup step.

        A schema migration may rebuild a table of millions of rows; killed midway it
        would roll back and start over on every restart.
        """
        self._send(f"EXTEND_TIMEOUT_USEC={seconds * 1_000_000}\nSTATUS={_clean(status)}")

    def stopping(self) -> None:
        """Report that shutdown has begun, so systemd does not call it a crash."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Prove the event loop is alive; call every `watchdog_interval()` seconds."""
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """Report a config reload in progress; send `ready()` again when done.

        MONOTONIC_USEC is what Type=notify-reload (systemd 253+) requires to match
        the reload to its request; older systemd ignores it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog_interval(self) -> float | None:
        """Return the ping interval, or None when nobody would read the pings."""
        return watchdog_interval() if self.enabled else None

    def close(self) -> None:
        """Close the socket; later notifications are no-ops."""
        if self._sd is not None:
            self._sd.socket.close()
            self._sd = None

    def _send(self, message: str) -> None:
        if self._sd is None:
            return
        try:
            self._sd.notify(message)
        except OSError as exc:
            self._failed(exc)
        else:
            self._failing = False

    def _failed(self, exc: OSError) -> None:
        # Once per outage: a dead socket would otherwise log every watchdog tick.
        if not self._failing:
            self._failing = True
            _log.warning(SD_NOTIFY_FAILED, error=str(exc))
