"""Copy fail2ban's new ban rows into the archive (the history_sync task's work).

Incremental by fail2ban's rowid: only rows above the high-water mark are read, so a
run costs what is new, not what is archived. Small runs put their rows in the recent
ip index; once it holds RECENT_MAX rows the run folds it into the main one, so that
cost, which does grow with the archive, is paid in large, cheaper batches.

The row at the mark is fingerprinted; when it changed or vanished (fail2ban's DB
recreated or restored, or its newest rows deleted by an unban so that rowids are
reused) the copy starts again from rowid 0, and the archive's natural key drops what
it already has: nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.archive.f2b_copy import Fail2banCopy, Fail2banDbMissing
from bangui_daemon.archive.state_repo import get_state, put_state
from bangui_daemon.events import EventHub, HistorySynced
from bangui_daemon.fail2ban.ban_rows import await_ban_rows
from bangui_daemon.models import TaskResult

log = structlog.get_logger(__name__)

PAGE_ROWS = 5000
RECENT_MAX = 20_000  # rows in the recent ip index before a run merges it
MARK_ROWID = "history_sync.rowid"
MARK_KEY = "history_sync.row_key"
LAST_SYNC = "history_sync.finished_at"
ROW_WAIT = 5.0  # s an unban waits for fail2ban to write the rows of the ban it lifts


class HistorySync:
    """Copies fail2ban's `bans` table into the archive, one short page at a time."""

    def __init__(
        self,
        archive: Archive,
        events: EventsRepository,
        f2b_path: Callable[[], str],
        blocklist_jail: Callable[[], str],
        hub: EventHub,
    ) -> None:
        self._archive = archive
        self._events = events
        self._f2b_path = f2b_path
        self._blocklist_jail = blocklist_jail
        self._hub = hub
        self._lock = asyncio.Lock()
        self.last_sync = 0

    async def load(self) -> None:
        """Read the last sync time kept in the archive."""
        self.last_sync = int(await get_state(self._archive, LAST_SYNC) or 0)

    async def run(self) -> TaskResult:
        """One full incremental sync: what the history_sync task runs."""
        async with self._lock:
            result = await self._sync()
        if result.get("new_events"):
            self._hub.publish(HistorySynced(int(str(result["new_events"]))))
        return result

    async def capture_ip(self, ip: str, live_jails: Sequence[str] = ()) -> int:
        """Archive every row fail2ban has for `ip`: called before an unban deletes them.

        fail2ban writes a ban's rows after the ban (its observer thread): for the jails
        that ban `ip` now, wait (ROW_WAIT s at most) until they are written, or the
        unban would delete nothing and fail2ban's next start restore the ban.
        """
        deadline = time.monotonic() + ROW_WAIT
        for jail in live_jails:
            left = deadline - time.monotonic()
            if left <= 0 or not await await_ban_rows(self._f2b_path(), jail, [ip], left):
                break
        try:
            async with Fail2banCopy.open(self._archive, self._f2b_path()) as copy:
                added = await copy.copy_ip(ip, self._blocklist_jail())
        except Fail2banDbMissing:
            return 0
        self._events.added(added)
        return added

    async def _sync(self) -> dict[str, object]:
        started = time.monotonic()
        mark = int(await get_state(self._archive, MARK_ROWID) or 0)
        mark_key = await get_state(self._archive, MARK_KEY)
        try:
            async with Fail2banCopy.open(self._archive, self._f2b_path()) as copy:
                top = await copy.max_rowid()
                rescan = mark > 0 and (top < mark or await copy.row_key(mark) != mark_key)
                if rescan:
                    log.warning("fail2ban_db_rewound", mark=mark, max_rowid=top)
                    mark = 0
                added = 0
                copying = 0.0  # seconds inside page transactions, the rest is overhead
                jail = self._blocklist_jail()
                bulk = top - mark >= RECENT_MAX
                while mark < top:
                    upto = min(mark + PAGE_ROWS, top)
                    key = await copy.row_key(upto) or ""
                    state = {MARK_ROWID: str(upto), MARK_KEY: key}
                    page_started = time.monotonic()
                    page_added = await copy.copy_range(mark, upto, jail, state, bulk=bulk)
                    copying += time.monotonic() - page_started
                    added += page_added
                    self._events.added(page_added)
                    mark = upto
                    await asyncio.sleep(0)  # let D-Bus callers and fail2ban in between pages
                holds = copy.holds
        except Fail2banDbMissing as exc:
            log.warning("history_sync_no_database", reason=str(exc))
            # the ban watch still archives: keep its recent ip index small
            await self._merge_recent_ips()
            return {"new_events": 0, "skipped": "fail2ban database not found"}
        merged = await self._merge_recent_ips()
        self.last_sync = int(time.time())
        async with self._archive.write() as conn:
            await put_state(conn, LAST_SYNC, str(self.last_sync))
            if rescan and top == 0:
                await put_state(conn, MARK_ROWID, "0")
        seconds = time.monotonic() - started
        (log.info if added else log.debug)(
            "history_sync_complete",
            new_events=added,
            rescanned=rescan,
            merged_ip_index=merged,
            copy_seconds=round(copying, 3),
            seconds=round(seconds, 3),
            # how long fail2ban's DB was read (its writer waits meanwhile): issue 17
            f2b_reads=holds.count,
            f2b_read_seconds=round(holds.total, 3),
            f2b_longest_read_ms=round(holds.longest * 1000, 1),
        )
        return {"new_events": added, "rescanned": rescan, "high_water_mark": mark}

    async def _merge_recent_ips(self) -> int:
        if await self._events.recent_ips() < RECENT_MAX:
            return 0
        started = time.monotonic()
        merged = await self._events.merge_recent_ips()
        log.info("ip_index_merged", rows=merged, seconds=round(time.monotonic() - started, 3))
        return merged
