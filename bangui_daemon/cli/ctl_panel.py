"""banguictl watch --format waybar|polybar|i3blocks: a live ban indicator for panel bars.

One line per change of what the bar shows, flushed at once, the first one immediately.
The line is computed from read methods (GetStatus, GetHistory) after a ban signal,
never by counting signals: a storm sends only BansChanged and a reconnect misses
signals, and neither may make the count drift. When the daemon leaves the bus
(NameOwnerChanged) or the bus itself goes away, the state is `offline` at once; the
client keeps trying and resumes with normal lines, without a restart of the bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bangui_daemon.cli.bus_client import DaemonClient, DaemonError
from bangui_daemon.cli.ctl_context import EXIT_OK, Context, as_int, as_text, on_stop_signals

PANEL_FORMATS: Final = ("waybar", "polybar", "i3blocks")
LATEST: Final = 5
"""Bans listed in the tooltip."""
STORM_BANS: Final = 100
STORM_WINDOW: Final = 60.0
"""More than STORM_BANS bans (not from a blocklist import) within STORM_WINDOW seconds."""
DEBOUNCE: Final = 0.2
"""Seconds to let a burst of signals settle before asking the daemon again."""
REFRESH: Final = 30.0
"""Seconds between refreshes without a signal (expiries of bans, the day's count)."""
RETRY: Final = 1.0
"""Seconds between attempts to reach the bus or a daemon that failed to answer."""

I3BLOCKS_COLORS: Final = {
    "idle": "#8fbc8f",
    "active": "#f0c674",
    "storm": "#cc6666",
    "offline": "#808080",
}


@dataclass(frozen=True)
class LatestBan:
    jail: str
    ip: str
    country_code: str
    timeofban: int


@dataclass(frozen=True)
class PanelState:
    """What a bar shows: `cls` is idle, active, storm or offline."""

    cls: str
    active: int = 0
    today: int = 0
    latest: tuple[LatestBan, ...] = ()

    @property
    def offline(self) -> bool:
        return self.cls == "offline"


OFFLINE: Final = PanelState("offline")


def classify(active: int, recent_bans: int) -> str:
    """The bar's class from the active ban count and the bans of the storm window."""
    if recent_bans > STORM_BANS:
        return "storm"
    return "active" if active > 0 else "idle"


def _latest_line(ban: LatestBan) -> str:
    where = f" {ban.country_code}" if ban.country_code else ""
    return f"{ban.jail} {ban.ip}{where}"


def tooltip_lines(state: PanelState) -> list[str]:
    """The tooltip as plain lines: a headline, then the latest bans."""
    if state.offline:
        return ["bangui-daemon is not on the bus"]
    head = f"{state.active} active ban{'s' if state.active != 1 else ''}, {state.today} today"
    if state.cls == "storm":
        head += " (ban storm)"
    return [head, *(_latest_line(b) for b in state.latest)]


def format_waybar(state: PanelState) -> str:
    """waybar `return-type: json`: text, tooltip (Pango markup escaped), class, alt."""
    text = "off" if state.offline else str(state.active)
    tooltip = "\n".join(html.escape(line, quote=False) for line in tooltip_lines(state))
    doc = {"text": text, "alt": state.cls, "tooltip": tooltip, "class": state.cls}
    return json.dumps(doc, ensure_ascii=False)


def format_polybar(state: PanelState) -> str:
    """polybar `custom/script` with `tail = true`: one plain line."""
    if state.offline:
        return "bans: offline"
    line = f"bans: {state.active} ({state.today} today)"
    if state.latest:
        line += f" last {state.latest[0].ip}"
    return line + (" STORM" if state.cls == "storm" else "")


def format_i3blocks(state: PanelState) -> str:
    """i3blocks `interval=persist`, `format=json`: full_text, short_text, color."""
    if state.offline:
        full, short = "bans: offline", "off"
    else:
        full = f"bans: {state.active} ({state.today} today)"
        if state.cls == "storm":
            full += " STORM"
        short = str(state.active)
    doc = {"full_text": full, "short_text": short, "color": I3BLOCKS_COLORS[state.cls]}
    return json.dumps(doc, ensure_ascii=False)


FORMATTERS: Final[dict[str, Callable[[PanelState], str]]] = {
    "waybar": format_waybar,
    "polybar": format_polybar,
    "i3blocks": format_i3blocks,
}


def local_midnight(now: float) -> int:
    """The start of today in local time, as Unix seconds."""
    t = time.localtime(now)
    return int(time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1)))


@dataclass
class StormWindow:
    """Bans added (per BansChanged) over the last STORM_WINDOW seconds, imports excluded."""

    added: deque[tuple[float, int]] = field(default_factory=deque)
    importing: set[int] = field(default_factory=set)

    def on_signal(self, member: str, args: list[object], now: float) -> None:
        if member == "ImportStarted" and args:
            self.importing.add(as_int(args[0]))
        elif member == "ImportFinished" and args:
            self.importing.discard(as_int(args[0]))
        elif member == "BansChanged" and args and not self.importing:
            self.added.append((now, as_int(args[0])))

    def count(self, now: float) -> int:
        while self.added and self.added[0][0] < now - STORM_WINDOW:
            self.added.popleft()
        return sum(n for _, n in self.added)


async def snapshot(client: DaemonClient, recent_bans: int, now: float) -> PanelState:
    """Ask the daemon for what the bar shows (read calls only); `now` is wall time."""
    status = await client.get_status()
    active = as_int(status.get("active_bans"))
    latest, _ = await client.get_history({"action": "ban"}, 1, LATEST)
    _, today = await client.get_history({"action": "ban", "since": local_midnight(now)}, 1, 1)
    countries = {as_text(r.get("ip")): as_text(r.get("country_code")) for r in latest}
    unknown = [ip for ip, cc in countries.items() if not cc]
    if unknown:  # an event archived before its address was resolved: ask the geo cache
        for ip, answer in zip(unknown, await client.lookup_ips(unknown), strict=False):
            countries[ip] = as_text(answer.get("country_code"))
    bans = tuple(
        LatestBan(
            as_text(r.get("jail")),
            as_text(r.get("ip")),
            countries.get(as_text(r.get("ip")), ""),
            as_int(r.get("timeofban")),
        )
        for r in latest
    )
    return PanelState(classify(active, recent_bans), active, today, bans)


class LinePrinter:
    """Write a state's line only when it differs from the last one written."""

    def __init__(self, ctx: Context, formatter: Callable[[PanelState], str]) -> None:
        self._ctx = ctx
        self._format = formatter
        self._last: str | None = None

    def show(self, state: PanelState) -> None:
        line = self._format(state)
        if line == self._last:
            return
        self._last = line
        self._ctx.out.write(line + "\n")
        self._ctx.out.flush()


async def _follow(client: DaemonClient, printer: LinePrinter, stop: asyncio.Event) -> None:
    """Show the daemon's state on one bus connection until it ends or `stop` is set."""
    wake = asyncio.Event()
    storm = StormWindow()
    present = [False]

    def on_signal(_interface: str, member: str, args: list[object]) -> None:
        storm.on_signal(member, args, time.monotonic())
        wake.set()

    def on_owner(owned: bool) -> None:
        present[0] = owned
        wake.set()

    await client.watch_owner(on_owner)
    await client.subscribe(on_signal)
    present[0] = await client.daemon_running()
    closed = asyncio.ensure_future(client.wait_closed())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not closed.done() and not stop.is_set():
            wake.clear()
            timeout = REFRESH
            if not present[0]:
                printer.show(OFFLINE)
            else:
                try:
                    state = await snapshot(client, storm.count(time.monotonic()), time.time())
                except DaemonError as error:
                    if error.daemon_absent:
                        printer.show(OFFLINE)
                    timeout = RETRY  # e.g. the daemon is still starting
                else:
                    printer.show(state)
            woke = asyncio.ensure_future(wake.wait())
            await asyncio.wait(
                {woke, closed, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            woke.cancel()
            if wake.is_set():
                await asyncio.sleep(DEBOUNCE)  # let the rest of a burst arrive
    finally:
        closed.cancel()
        stopped.cancel()


async def cmd_panel(ctx: Context) -> int:
    """Print the bar's line for every state change until Ctrl-C/SIGTERM; reconnect forever."""
    printer = LinePrinter(ctx, FORMATTERS[ctx.args.format])
    stop = asyncio.Event()
    with on_stop_signals(stop.set):
        while not stop.is_set():
            client = DaemonClient(timeout=ctx.args.timeout)
            try:
                await client.connect(ctx.args.bus)
                if ctx.ready is not None:
                    ctx.ready.set()
                await _follow(client, printer, stop)
            except DaemonError:
                pass  # the bus is unreachable or went away mid-call: offline, retry
            finally:
                client.close()
            if not stop.is_set():
                printer.show(OFFLINE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY)
    return EXIT_OK
