"""banguictl notify: a per-user agent that turns bans into desktop notifications.

It follows the daemon's signals on the system bus and posts through the session's
notification server (`org.freedesktop.Notifications`), which only a process of the
logged-in user can reach: a system daemon must not post on somebody's desktop.

Bursts are merged so that a ban storm never floods the desktop: at most one post
every `interval` seconds; while bans keep coming (no pause of `quiet` seconds) each
post replaces the burst's first notification (`replaces_id`) with a summary such as
"37 new bans in sshd". Blocklist imports are not announced: they send only
BansChanged, and a list of 100,000 addresses is not news.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from bangui_daemon.cli.bus_client import DaemonClient, DaemonError
from bangui_daemon.cli.ctl_context import EXIT_OK, PROG, Context, as_int, as_text, on_stop_signals
from bangui_daemon.cli.desktop_notifications import (
    URGENCY_LOW,
    URGENCY_NORMAL,
    DesktopNotifications,
)

INTERVAL: Final = 2.0
"""At most one notification per this many seconds."""
QUIET: Final = 10.0
"""A pause this long ends a burst: the next ban gets a notification of its own."""
SHOWN: Final = 5
"""Addresses listed in a summary's body."""
RETRY: Final = 2.0
"""Seconds between attempts to reach a bus that is not there (yet)."""


@dataclass(frozen=True)
class Post:
    """One notification to show: `replace` = update the burst's notification in place."""

    total: int
    jails: tuple[tuple[str, int], ...]
    """(jail, bans) of the burst, most bans first; "" for bans of unknown jail."""
    shown: tuple[tuple[str, str], ...]
    """The latest (jail, ip) pairs, newest first."""
    replace: bool


@dataclass
class BurstCoalescer:
    """Merge bans into at most one post per `interval`; pure, the clock is passed in."""

    interval: float = INTERVAL
    quiet: float = QUIET
    _pending: int = 0
    _burst: Counter[str] = field(default_factory=Counter)
    _burst_latest: list[tuple[str, str]] = field(default_factory=list)
    _burst_posted: bool = False
    _last_post: float | None = None
    _last_ban: float | None = None

    def add(self, jail: str, ip: str, now: float) -> None:
        """A ban with its address (BanAdded)."""
        self._count(jail, 1, now)
        self._burst_latest.insert(0, (jail, ip))
        del self._burst_latest[SHOWN:]

    def add_anonymous(self, count: int, now: float) -> None:
        """Bans known only by number (a storm tick sends BansChanged alone)."""
        if count > 0:
            self._count("", count, now)

    def _count(self, jail: str, count: int, now: float) -> None:
        if self._last_ban is None or now - self._last_ban >= self.quiet:
            # a pause ended the last burst: this ban gets a notification of its own
            self._burst.clear()
            self._burst_latest.clear()
            self._burst_posted = False
        self._last_ban = now
        self._burst[jail] += count
        self._pending += count

    def ready_at(self) -> float | None:
        """When the pending bans may be posted (None: nothing pending)."""
        if not self._pending:
            return None
        return 0.0 if self._last_post is None else self._last_post + self.interval

    def take(self, now: float) -> Post | None:
        """The post due at `now`, if any; the pending bans are then consumed."""
        due = self.ready_at()
        if due is None or now < due:
            return None
        replace, self._burst_posted = self._burst_posted, True
        self._pending = 0
        self._last_post = now
        jails = tuple(sorted(self._burst.items(), key=lambda kv: (-kv[1], kv[0])))
        return Post(sum(self._burst.values()), jails, tuple(self._burst_latest), replace)


def summary_text(post: Post) -> str:
    """The notification's title: "Ban in sshd" or "37 new bans in sshd and nginx"."""
    named = [jail for jail, _ in post.jails if jail]
    if post.total == 1 and named:
        return f"Ban in {named[0]}"
    where = ""
    if named:
        listed = named[:2]
        where = " in " + " and ".join(listed)
        if len(named) > 2 or any(not jail for jail, _ in post.jails):
            where = " in " + ", ".join(listed) + " and others"
    return f"{post.total} new bans{where}"


def body_text(post: Post, geo: dict[str, dict[str, object]]) -> str:
    """The body: one line per shown address with its country and ASN when known."""
    lines = []
    for jail, ip in post.shown:
        answer = geo.get(ip, {})
        parts = [
            as_text(answer.get("country_code")),
            as_text(answer.get("asn")),
            as_text(answer.get("org")),
        ]
        where = " ".join(p for p in parts if p)
        lines.append(f"{ip} ({jail}{', ' + where if where else ''})")
    hidden = post.total - len(post.shown)
    if hidden > 0 and post.shown:
        lines.append(f"and {hidden} more")
    return "\n".join(lines)


async def _geo_of(client: DaemonClient, ips: list[str]) -> dict[str, dict[str, object]]:
    """Country and ASN of the shown addresses; nothing (not an error) if the lookup fails."""
    if not ips:
        return {}
    try:
        answers = await client.lookup_ips(ips)
    except DaemonError:
        return {}
    return {ip: dict(answer) for ip, answer in zip(ips, answers, strict=False)}


class NotifyAgent:
    """Follow bans on the system bus and post merged notifications on the session bus."""

    def __init__(self, ctx: Context, coalescer: BurstCoalescer) -> None:
        self._ctx = ctx
        self._coalescer = coalescer
        self._wake = asyncio.Event()
        self._importing: set[int] = set()
        self._named_since_tick = 0
        self._burst_notification = 0

    def on_signal(self, _interface: str, member: str, args: list[object]) -> None:
        now = time.monotonic()
        if member == "BanAdded" and len(args) >= 2:
            self._coalescer.add(as_text(args[0]), as_text(args[1]), now)
            self._named_since_tick += 1
        elif member == "BansChanged" and args:
            # >100 changes in a tick come without BanAdded: count the difference
            if not self._importing:
                self._coalescer.add_anonymous(as_int(args[0]) - self._named_since_tick, now)
            self._named_since_tick = 0
        elif member == "ImportStarted" and args:
            self._importing.add(as_int(args[0]))
        elif member == "ImportFinished" and args:
            self._importing.discard(as_int(args[0]))
        else:
            return
        self._wake.set()

    async def post_due(self, daemon: DaemonClient, desktop: DesktopNotifications) -> float:
        """Post what is due now; return seconds until the next check."""
        now = time.monotonic()
        post = self._coalescer.take(now)
        if post is None:
            due = self._coalescer.ready_at()
            return 3600.0 if due is None else max(0.0, due - now)
        geo = await _geo_of(daemon, [ip for _, ip in post.shown])
        replaces = self._burst_notification if post.replace else 0
        try:
            self._burst_notification = await desktop.notify(
                summary_text(post),
                body_text(post, geo),
                replaces_id=replaces,
                urgency=URGENCY_NORMAL if post.total < 100 else URGENCY_LOW,
            )
        except DaemonError as error:
            self._ctx.err.write(f"{PROG}: cannot post a notification: {error.message}\n")
            self._ctx.err.flush()
        return self._coalescer.interval

    async def follow(self, daemon: DaemonClient, session: DaemonClient) -> None:
        """Post until either bus connection ends."""
        desktop = DesktopNotifications(session)
        await daemon.subscribe(self.on_signal)
        # said once the match rule is in place: no ban after this line is missed
        self._ctx.err.write(
            f"{PROG}: notifying new bans from {daemon.address_label} on {session.address_label}\n"
        )
        self._ctx.err.flush()
        if self._ctx.ready is not None:
            self._ctx.ready.set()
        ended = [
            asyncio.ensure_future(daemon.wait_closed()),
            asyncio.ensure_future(session.wait_closed()),
        ]
        try:
            delay = 3600.0
            while not any(f.done() for f in ended):
                woke = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {woke, *ended}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
                woke.cancel()
                self._wake.clear()
                delay = await self.post_due(daemon, desktop)
        finally:
            for f in ended:
                f.cancel()


async def _connect(address: str | None, reply_seconds: float) -> DaemonClient:
    client = DaemonClient(timeout=reply_seconds)
    await client.connect(address)
    return client


async def cmd_notify(ctx: Context) -> int:
    """Run the agent until Ctrl-C/SIGTERM, reconnecting to either bus when it comes back."""
    agent = NotifyAgent(ctx, BurstCoalescer(interval=ctx.args.interval, quiet=QUIET))
    stop = asyncio.Event()
    said: str | None = None
    with on_stop_signals(stop.set):
        while not stop.is_set():
            daemon = session = None
            try:
                daemon = await _connect(ctx.args.bus, ctx.args.timeout)
                session = await _connect(ctx.args.session_bus, ctx.args.timeout)
                said = None
                running = asyncio.ensure_future(agent.follow(daemon, session))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, DaemonError):
                    await running
            except DaemonError as error:
                if error.message != said:  # say it once, not every retry
                    said = error.message
                    ctx.err.write(f"{PROG}: {error.message}; retrying\n")
                    ctx.err.flush()
            finally:
                for client in (daemon, session):
                    if client is not None:
                        client.close()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY)
    return EXIT_OK
