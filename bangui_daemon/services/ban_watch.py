"""The ban watch: bans signalled milliseconds after fail2ban makes them, at a cost that
grows with the changes, not with the bans held.

Why fail2ban's DB, and how:

- fail2ban writes one `bans` row per ban, from its observer thread a few ms after the
  ban, whatever made it (a log line, `banip`, an import). Watching the DB file with
  inotify (fail2ban/db_changes.py) and reading only the rows after the last one read
  (fail2ban/db_tail.py, one short read transaction each) finds a new ban in about
  10 ms (bench/bench_banwatch.py) and costs fail2ban nothing: no socket command at all.
  The daemon reads this DB for the history already, and nothing in fail2ban's config
  has to change. Tailing fail2ban's log was the alternative; its target (file,
  syslog, journal) and line format are the admin's choice, its DB is not.
- What the DB does not show is lifted bans: expiry leaves the rows, a manual unban
  deletes them. Expiry is computable (time of ban + ban time), UnbanIp knows what it
  lifted, and the safety net, the ban_watch task, asks fail2ban for its counters
  (`status`, `status JAIL short`: constant size) when something may have been lifted
  or hidden: a ban due, an UnbanIp, a write of the DB that brought no ban row (an
  unban deletes rows; log positions are written too), a lost connection or DB; and
  every FULL_EVERY ticks regardless. Other ticks ask nothing: at ~0.2 ms of
  fail2ban's CPU a command, three commands every 2 s were about 20% of what a quiet
  fail2ban spends (bench/bench_banwatch.py). When the counters agree with the
  snapshot, that is all; due bans are named without asking, or asked about
  (`get JAIL banned ...`) when only some were lifted yet. Only counters nothing
  explains (an unban through fail2ban-client, fail2ban without a DB, a jail
  restarted) lead to a full list, once: first the watch looks again (a DB row may be
  in flight), then it reads `get JAIL banip --with-time` for that jail.
- Without inotify the DB is read every 0.25 s (an index seek); without a readable DB
  the counters are all there is, and a changed jail is listed, as before this design.

Per-address signals are for people watching a handful of bans. The contract's tick is
the `tasks.ban_watch` interval: while more than PER_ADDRESS_LIMIT changes fell in the
last interval (a storm), or for the jail an import is filling, changes are only summed
into BansChanged, sent at most once an interval. A new ban's address is resolved (an
MMDB lookup, microseconds) and stored before its BanAdded, so ListBans, GetHistory and
GetIpHistory called on the signal carry its country and ASN.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import structlog

from bangui_daemon.errors import Fail2banUnavailable
from bangui_daemon.events import BanAdded, BanRemoved, BansChanged, EventHub
from bangui_daemon.fail2ban.db_changes import FileChanges
from bangui_daemon.fail2ban.db_tail import BanRowTail, Fail2banDbUnavailable
from bangui_daemon.services.bans import BanDiff, BanService

log = structlog.get_logger(__name__)

PER_ADDRESS_LIMIT = 100
SETTLE = 0.005  # after a write wakes us: let the rest of a burst land in the same read
RECHECK = 0.3  # unexplained counters: wait this long for a DB row before listing
RETRY = 2.0  # the DB could not be read: try again after this long
FULL_EVERY = 5  # ticks: the counters are read at least this often, whatever happened

DiffListener = Callable[[BanDiff], Awaitable[None]]
GeoResolve = Callable[[Sequence[str]], Awaitable[None]]
TaskResult = dict[str, object]


class BanWatch:
    """Keeps BanService's snapshot current and publishes what changes."""

    def __init__(
        self,
        bans: BanService,
        tail: BanRowTail,
        changes: FileChanges,
        hub: EventHub,
        geo: GeoResolve,
        interval: Callable[[], float],
        *,
        listeners: Sequence[DiffListener] = (),
        quiet_jail: Callable[[], str | None] = lambda: None,
        busy_jail: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bans = bans
        self._tail = tail
        self._changes = changes
        self._hub = hub
        self._geo = geo
        self._interval = interval
        self._listeners = list(listeners)
        self._quiet_jail = quiet_jail
        self._busy_jail = busy_jail
        self._clock = clock
        self._lock = asyncio.Lock()  # one change of the snapshot (and its signals) at a time
        self._poll_lock = asyncio.Lock()
        self._db_ok = False
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic, changes) per batch
        self._summary = [0, 0]  # added, removed not yet in a BansChanged
        self._summary_sent = 0.0
        self._summary_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._rows_read = 0
        self._dirty = False  # fail2ban wrote its DB without a ban row (an unban?)
        self._lost = False  # the tail may have skipped rows
        self._light_ticks = 0

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Take the first snapshot (the DB's end first, so no ban falls between) and
        follow fail2ban's DB from then on."""
        await self._open_tail()
        self._task = asyncio.create_task(self._follow(), name="ban-watch-db")
        with contextlib.suppress(Fail2banUnavailable):
            await self.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._summary_timer is not None:
            self._summary_timer.cancel()
        self._changes.close()
        await self._tail.close()

    # ---- the DB side: new bans ----------------------------------------------

    async def _open_tail(self) -> None:
        try:
            await self._tail.start()
        except Fail2banDbUnavailable as exc:
            # read() starts the tail once the DB can be read; the counters cover until then
            log.warning("fail2ban_db_unreadable", path=self._tail.path, reason=str(exc))
        else:
            self._db_ok = True
        self._changes.start()

    async def _follow(self) -> None:
        while True:
            try:
                # a read per interval even without a wake-up: the watch may have died
                woken = await self._changes.wait(self._interval() if self._db_ok else RETRY)
                await asyncio.sleep(SETTLE)
                self._changes.clear()  # what is written from here on wakes us again
                async with self._lock:
                    rows = await self._read_rows()
                if woken and not rows and self._changes.event_driven:
                    self._dirty = True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ban_watch_follow_failed")
                await asyncio.sleep(RETRY)

    async def _read_rows(self) -> int:
        """Read and apply every new row (lock held); return how many were read."""
        count = 0
        while True:
            try:
                read = await self._tail.read()
            except Fail2banDbUnavailable as exc:
                if self._db_ok:
                    log.warning("fail2ban_db_unreadable", path=self._tail.path, reason=str(exc))
                self._db_ok = False
                return count
            if not self._db_ok:
                log.info("fail2ban_db_readable", path=self._tail.path)
                self._db_ok = True
            if read.lost:
                log.info("fail2ban_db_rows_skipped", path=self._tail.path)
                self._lost = True
            count += len(read.rows)
            self._rows_read += len(read.rows)
            diff = self._bans.apply_rows(read.rows, self._clock())
            await self._publish(diff)
            if not read.more:
                return count
            await asyncio.sleep(0)

    # ---- the safety net: fail2ban's counters ----------------------------------

    async def poll(self, *, full: bool = False) -> TaskResult:
        """One safety-net tick (the ban_watch task, RunTask, after UnbanIp).

        When nothing can have been lifted or hidden (see `BanService.settled`, and
        fail2ban's DB was only written with ban rows), the tick asks fail2ban nothing;
        every FULL_EVERY ticks, or with `full`, it reads the counters regardless.
        """
        async with self._poll_lock:
            if not full and self._light_ok():
                self._light_ticks += 1
                return {"counters_read": False, "active_bans": self._bans.active_bans()}
            self._light_ticks = 0
            return await self._poll()

    def _light_ok(self) -> bool:
        return (
            self._db_ok
            and self._changes.event_driven
            and not self._dirty
            and not self._lost
            and self._light_ticks < FULL_EVERY - 1
            and self._bans.settled(self._clock())
        )

    async def _poll(self) -> TaskResult:
        started = time.monotonic()
        added = removed = 0
        lists: list[str] = []
        asked = 0
        looked_again = False
        self._dirty = False  # writes from here on are seen by the next tick
        counts = await self._bans.read_counts()
        async with self._lock:
            await self._read_rows()
            complete, self._lost = not self._lost, False
            plan = self._bans.reconcile(counts, self._clock())
            await self._publish(plan.diff, tick=True)
        added, removed = len(plan.diff.added), len(plan.diff.removed)
        if plan.ask:
            answers = {
                jail: dict(zip(ips, await self._bans.ask_banned(jail, ips), strict=True))
                for jail, ips in plan.ask.items()
            }
            asked = sum(len(a) for a in answers.values())
            async with self._lock:
                again = self._bans.reconcile(counts, self._clock(), answers, only=answers)
                await self._publish(again.diff)
            added, removed = added + len(again.diff.added), removed + len(again.diff.removed)
            plan.unexplained |= again.unexplained
            plan.lists |= again.lists
        if plan.unexplained and self._db_ok and complete:
            # a ban fail2ban counted may have its row written a moment later
            looked_again = True
            await self._changes.wait(RECHECK)
            counts = await self._bans.read_counts()
            async with self._lock:
                await self._read_rows()
                again = self._bans.reconcile(counts, self._clock(), only=plan.unexplained)
                await self._publish(again.diff)
            added, removed = added + len(again.diff.added), removed + len(again.diff.removed)
            plan.unexplained = again.unexplained | set(again.ask)
            plan.lists |= again.lists
        busy = self._busy_jail()
        for jail in sorted(plan.lists | plan.unexplained):
            if jail == busy and jail in plan.unexplained:
                continue  # an import is filling it: list it once it settles
            diff = await self._list(jail)
            lists.append(jail)
            added, removed = added + len(diff.added), removed + len(diff.removed)
        self._bans.mark_baseline()
        return {
            "counters_read": True,
            "added": added,
            "removed": removed,
            "active_bans": self._bans.active_bans(),
            "lists": lists,
            "asked": asked,
            "looked_again": looked_again,
            "db_rows": self._rows_read,
            "event_driven": self._changes.event_driven and self._db_ok,
            "seconds": round(time.monotonic() - started, 3),
        }

    async def _list(self, jail: str) -> BanDiff:
        # rows counted from here and counters from before the list: every ban made
        # meanwhile is then explained (counted twice at worst, which is tolerated)
        async with self._lock:
            await self._read_rows()
            rows_seen = self._bans.begin_list(jail)
        try:
            counts = (await self._bans.read_counts()).get(jail)
            if counts is None:
                self._bans.end_list()
                return BanDiff()
            entries = await self._bans.read_list(jail)
        except BaseException:
            self._bans.end_list()
            raise
        async with self._lock:
            diff = self._bans.apply_list(jail, entries, counts, rows_seen)
            await self._publish(diff)
        log.info("ban_list_read", jail=jail, bans=len(entries))
        return diff

    # ---- publishing ------------------------------------------------------------

    async def _publish(self, diff: BanDiff, *, tick: bool = False) -> None:
        """Archive, then signal (lock held): per address unless it is a storm or an
        import; a new ban's geo answer first."""
        if not diff.changed and not tick:
            return
        loud_added, loud_removed = diff.added, diff.removed
        quiet = self._quiet_jail()
        if quiet is not None:
            loud_added = [b for b in diff.added if b.jail != quiet]
            loud_removed = [b for b in diff.removed if b.jail != quiet]
        per_address = not diff.baseline and self._within_limit(len(loud_added) + len(loud_removed))
        if per_address and loud_added:
            try:
                await self._geo([b.ip for b in loud_added])
            except Exception:
                log.exception("geo_before_signal_failed")
        for listener in self._listeners:
            await listener(diff)
        if diff.baseline or not diff.changed:
            return
        self._summary[0] += len(diff.added)
        self._summary[1] += len(diff.removed)
        if per_address and (loud_added or loud_removed):
            for ban in loud_added:
                self._hub.publish(BanAdded(ban.jail, ban.ip, ban.timeofban, ban.bantime))
            for ban in loud_removed:
                self._hub.publish(BanRemoved(ban.jail, ban.ip))
            self._send_summary()
        else:
            self._schedule_summary()

    def _within_limit(self, changes: int) -> bool:
        """Whether the changes of the last interval, these included, stay at most
        PER_ADDRESS_LIMIT."""
        now = time.monotonic()
        window = self._interval()
        recent = self._recent
        while recent and recent[0][0] <= now - window:
            recent.popleft()
        if changes:
            recent.append((now, changes))
        return sum(n for _t, n in recent) <= PER_ADDRESS_LIMIT

    def _send_summary(self) -> None:
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
        added, removed = self._summary
        if added or removed:
            self._summary = [0, 0]
            self._summary_sent = time.monotonic()
            self._hub.publish(BansChanged(added, removed))

    def _schedule_summary(self) -> None:
        """BansChanged for summed changes: now, or one interval after the last one."""
        if self._summary_timer is not None:
            return
        delay = self._summary_sent + self._interval() - time.monotonic()
        if delay <= 0:
            self._send_summary()
        else:
            loop = asyncio.get_running_loop()
            self._summary_timer = loop.call_later(delay, self._send_summary)
