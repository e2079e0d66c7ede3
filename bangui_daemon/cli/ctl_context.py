"""What every banguictl command shares: exit codes, error wording, output helpers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Final, TextIO

from bangui_daemon.cli import render
from bangui_daemon.cli.bus_client import (
    ERROR_NAME_HAS_NO_OWNER,
    ERROR_NO_SERVER,
    ERROR_SERVICE_UNKNOWN,
    DaemonClient,
    DaemonError,
    Record,
)
from bangui_daemon.dbus.names import BUS_NAME

PROG: Final = "banguictl"
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3

TOP_DIMENSIONS: Final = ("jail", "country", "asn", "ip")
WATCHED_PROPERTIES: Final = ("State", "Fail2banConnected")
SIGNAL_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "BanAdded": ("jail", "ip", "timeofban", "bantime"),
    "BanRemoved": ("jail", "ip"),
    "BansChanged": ("added", "removed"),
    "TaskFinished": ("name", "status", "details"),
    "HistorySynced": ("new_events",),
    "ImportStarted": ("source_id", "run_id"),
    "ImportProgress": ("source_id", "done", "total"),
    "ImportFinished": ("source_id", "status", "added", "removed"),
    "PropertiesChanged": ("interface", "changed", "invalidated"),
}
WATCH_MEMBERS: Final = tuple(SIGNAL_ARGS)
FAILED_STATUSES: Final = ("failed", "timeout")


def exit_code_for(error: DaemonError) -> int:
    """3 when the daemon (or its bus) is unreachable, 1 for every other D-Bus error."""
    return EXIT_UNAVAILABLE if error.daemon_absent else EXIT_ERROR


def _words(short_name: str) -> str:
    """AccessDenied -> "access denied", Fail2banUnavailable -> "fail2ban unavailable"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", short_name).lower()


def describe_error(error: DaemonError, bus_label: str = "the bus") -> str:
    """One readable line (without the `banguictl: ` prefix) for a DaemonError."""
    message = render.clean(error.message)
    if error.name in (ERROR_SERVICE_UNKNOWN, ERROR_NAME_HAS_NO_OWNER):
        return (
            f"daemon not running: nothing owns {BUS_NAME} on {bus_label} "
            "(start it with 'systemctl start bangui-daemon', or choose its bus with --bus ADDRESS)"
        )
    if error.name == ERROR_NO_SERVER:
        return (
            f"bus unavailable: {message} "
            "(is dbus running? choose a bus with --bus ADDRESS or DBUS_SYSTEM_BUS_ADDRESS)"
        )
    text = _words(error.short_name)
    if message:
        text = f"{text}: {message}"
    if error.short_name == "AccessDenied":
        text += " (admin commands need root or membership in the bangui-admin group)"
    return text


# --- output helpers --------------------------------------------------------------------------
@dataclass
class Context:
    """What a command needs: the client, its arguments, where to write, and the clock."""

    client: DaemonClient
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    now: float = field(default_factory=time.time)
    width: int = 80
    tz: tzinfo | None = None
    bar_char: str = "█"
    progress: bool = False
    ready: asyncio.Event | None = None
    """Set by `watch` once it is subscribed, so a caller can start emitting signals."""

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def emit(self, doc: object, text: Callable[[], str]) -> None:
        """Write `doc` as one JSON document, or the human rendering."""
        if self.json:
            self.out.write(json.dumps(doc, indent=2, default=json_default) + "\n")
        else:
            rendered = text()
            if rendered:
                self.out.write(rendered + "\n")
        self.out.flush()

    def ts(self, value: object) -> str:
        """A table cell for a time: local "YYYY-MM-DD HH:MM:SS", "-" for never."""
        seconds = as_int(value)
        return render.format_timestamp(seconds, self.tz) if seconds > 0 else "-"

    def rel(self, value: object, never: str = "-") -> str:
        """A table cell for a time relative to now: "2 min ago", "in 5 min"."""
        seconds = as_int(value)
        return render.format_relative(seconds, self.now) if seconds > 0 else never

    def when(self, value: object) -> str:
        """A key/value line for a time: absolute and relative."""
        return render.format_when(as_int(value), self.now, self.tz)


def json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def as_int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def as_text(value: object) -> str:
    """Render any unwrapped D-Bus value for a cell or a key/value line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(as_text(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={as_text(v)}" for k, v in value.items())
    return render.clean(value)


def shorten(value: object, limit: int = 32) -> str:
    text = as_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(key: str) -> str:
    return key.replace("_", " ")


def extras(record: Record, known: Iterable[str]) -> list[tuple[str, object]]:
    """Keys the contract may add later: shown generically rather than dropped."""
    seen = set(known)
    return [(label(k), as_text(v)) for k, v in record.items() if k not in seen]


def record_lines(ctx: Context, record: Record, time_keys: Iterable[str] = ()) -> str:
    times = set(time_keys)
    pairs = [
        (label(k), ctx.when(v) if k in times else as_text(v))
        for k, v in record.items()
        if v != ""  # e.g. error="" on success: nothing to say
    ]
    return render.key_values(pairs)


def page_footer(shown: int, first: int, total: int, hint: str) -> str:
    if total == 0 or shown == 0:
        return ""
    last = first + shown - 1
    more = f" ({hint})" if last < total else ""
    return f"\n{first}-{last} of {total}{more}"


# --- commands -------------------------------------------------------------------------------


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], object]) -> Iterator[None]:
    """Call `callback` on SIGINT or SIGTERM while inside: the long-running commands
    (watch, panel, notify) end cleanly. Outside the main thread nothing is installed."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, callback)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
