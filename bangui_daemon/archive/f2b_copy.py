"""Copy fail2ban's `bans` rows into the archive inside SQLite, in short pages.

fail2ban's DB is ATTACHed read-only to a side connection and every read of it is one
short statement of its own: `INSERT INTO temp.f2b_stage SELECT ... FROM f2b.bans` for
at most STAGE_ROWS rows. fail2ban keeps its DB in rollback-journal mode (journal_mode
MEMORY), so a reader's SHARED lock makes fail2ban's commit wait, and after its 5 s
timeout fail2ban loses the ban row ("database is locked"). The archive's work (the
geo join, the indexes, the ban watch's rows) then runs from the staged rows with
fail2ban's DB released: a page's archive transaction never reads fail2ban's DB, so
however long it takes, fail2ban does not wait for it. Each page's transaction also
moves the high-water mark, so a crash resumes where it stopped.

The archive transaction starts with a deferred BEGIN: BEGIN IMMEDIATE would also open
a read transaction on the attached (read-only) fail2ban DB and hold its SHARED lock
until COMMIT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiosqlite

from bangui_daemon.archive.db import Archive, rollback
from bangui_daemon.archive.state_repo import put_state
from bangui_daemon.errors import BanguiError


def _ro_uri(path: str) -> str:
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


CHECKPOINT_PAGES = 16384  # 64 MiB of WAL with 4 KiB pages
# Rows read from fail2ban's DB per statement: a few ms of SHARED lock each
# (bench/bench_f2b_lock.py), far below fail2ban's 5 s lock timeout.
STAGE_ROWS = 2_000


class Fail2banDbMissing(BanguiError, FileNotFoundError):
    """fail2ban's DB file or its `bans` table does not exist (yet)."""


@dataclass
class Holds:
    """How long this session held fail2ban's DB: each statement that read it, timed."""

    count: int = 0
    total: float = 0.0
    longest: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)


class Fail2banCopy:
    """One open copy session; create with `Fail2banCopy.open(archive, path)`."""

    def __init__(self, archive: Archive, conn: aiosqlite.Connection, columns: set[str]) -> None:
        self._archive = archive
        self._conn = conn
        self.holds = Holds()
        bancount = "b.bancount" if "bancount" in columns else "1"
        data = "b.data" if "data" in columns else "NULL"
        self._stage = (
            "INSERT INTO temp.f2b_stage (jail, ip, timeofban, bantime, bancount, data) "
            f"SELECT b.jail, b.ip, b.timeofban, b.bantime, {bancount}, {data} "
            "FROM f2b.bans AS b WHERE b.ip IS NOT NULL AND {where}"
        )
        self._insert = (
            "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, bancount, "
            "data, origin, recorded_by, ip_indexed, country_code, asn) "
            "SELECT 'ban', b.jail, b.ip, b.timeofban, b.bantime, b.bancount, b.data, "
            "CASE WHEN b.jail = :blocklist THEN 'blocklist' ELSE 'selfblock' END, "
            "'history_sync', :ip_indexed, coalesce(g.country_code, ''), coalesce(g.asn, '') "
            "FROM temp.f2b_stage AS b LEFT JOIN geo_cache AS g ON g.ip = b.ip AND g.found = 1 "
            "WHERE true ON CONFLICT (timeofban, jail, ip, action) DO NOTHING"
        )
        self._fill = (
            "UPDATE ban_events SET data = b.data, bancount = b.bancount, bantime = b.bantime, "
            "recorded_by = 'history_sync' FROM temp.f2b_stage AS b "
            "WHERE ban_events.recorded_by = 'ban_watch' AND +ban_events.action = 'ban' "
            "AND ban_events.jail = b.jail AND ban_events.ip = b.ip "
            "AND ban_events.timeofban = b.timeofban"
        )
        # fail2ban's row has round(time of ban), the ban watch saw it truncated (`banip
        # --with-time`): a live ban one second before its row is that row's ban. A row of
        # fail2ban's at the live ban's own second in another page ends the same way: it is
        # copied as a ban of its own, as it is in fail2ban's DB.
        self._align = (
            "UPDATE ban_events SET timeofban = timeofban + 1 "
            "WHERE recorded_by = 'ban_watch' AND +action = 'ban' "
            "AND EXISTS (SELECT 1 FROM temp.f2b_stage AS b WHERE b.jail = ban_events.jail "
            "  AND b.ip = ban_events.ip AND b.timeofban = ban_events.timeofban + 1) "
            "AND NOT EXISTS (SELECT 1 FROM temp.f2b_stage AS b WHERE b.jail = ban_events.jail "
            "  AND b.ip = ban_events.ip AND b.timeofban = ban_events.timeofban) "
            "AND NOT EXISTS (SELECT 1 FROM ban_events AS o WHERE o.action = 'ban' "
            "  AND o.jail = ban_events.jail AND o.ip = ban_events.ip "
            "  AND o.timeofban = ban_events.timeofban + 1)"
        )

    @classmethod
    @asynccontextmanager
    async def open(cls, archive: Archive, f2b_path: str) -> AsyncIterator[Fail2banCopy]:
        """Attach fail2ban's DB read-only for the duration of the block."""
        if not await asyncio.to_thread(Path(f2b_path).is_file):
            raise Fail2banDbMissing(f"fail2ban database {f2b_path} does not exist")
        async with archive.side_connection() as conn:
            await conn.execute("ATTACH DATABASE ? AS f2b", (_ro_uri(f2b_path),))
            # Fewer, larger WAL checkpoints (each one fsyncs) while pages are copied.
            await conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            await conn.execute("PRAGMA temp_store=MEMORY")  # a page is a few MB
            rows = await conn.execute_fetchall("PRAGMA f2b.table_info(bans)")
            columns = {str(r[1]) for r in rows}
            if not {"jail", "ip", "timeofban", "bantime"} <= columns:
                raise Fail2banDbMissing(f"{f2b_path} has no usable bans table")
            # no declared types: values are kept exactly as fail2ban stored them
            await conn.execute(
                "CREATE TEMP TABLE f2b_stage (jail, ip, timeofban, bantime, bancount, data)"
            )
            yield cls(archive, conn, columns)

    @asynccontextmanager
    async def _holding(self) -> AsyncIterator[None]:
        """Time one statement that reads fail2ban's DB. Outside a transaction its SHARED
        lock lasts that statement only (the time includes the thread hop: an upper bound)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.holds.add(time.monotonic() - started)

    async def max_rowid(self) -> int:
        async with self._holding():
            rows = await self._conn.execute_fetchall("SELECT max(rowid) FROM f2b.bans")
        return int(next(iter(rows))[0] or 0)

    async def row_key(self, rowid: int) -> str | None:
        """Fingerprint of one row: tells whether fail2ban's DB was recreated."""
        async with self._holding():
            rows = list(
                await self._conn.execute_fetchall(
                    "SELECT jail, ip, timeofban FROM f2b.bans WHERE rowid = ?", (rowid,)
                )
            )
        return None if not rows else row_key(*rows[0])

    async def _stage_rows(self, where: str, params: Mapping[str, object]) -> None:
        async with self._holding():
            await self._conn.execute(self._stage.format(where=where), params)

    async def copy_range(
        self,
        after: int,
        upto: int,
        blocklist_jail: str,
        state: Mapping[str, str],
        *,
        bulk: bool = False,
    ) -> int:
        """Copy rows with after < rowid <= upto and store `state`; return rows added.

        `bulk` rows go straight into the main ip index: a large page gives each of its
        leaves many rows. Small copies go to the recent one (see migration 0004).
        """
        await self._clear_stage()
        where = "b.rowid > :after AND b.rowid <= :upto"
        for low in range(after, upto, STAGE_ROWS):
            bounds = {"after": low, "upto": min(low + STAGE_ROWS, upto)}
            await self._stage_rows(where, bounds)
        return await self._archive_stage(blocklist_jail, state, bulk=bulk)

    async def copy_ip(self, ip: str, blocklist_jail: str) -> int:
        """Copy every row fail2ban has for `ip` (before an unban deletes them)."""
        await self._clear_stage()
        await self._stage_rows("b.ip = :ip", {"ip": ip})
        return await self._archive_stage(blocklist_jail, {}, bulk=False)

    async def _clear_stage(self) -> None:
        # the index is built after staging, when needed: kept, it would slow the staging
        # statements, and those are the ones that hold fail2ban's DB
        await self._conn.execute("DROP INDEX IF EXISTS temp.f2b_stage_key")
        await self._conn.execute("DELETE FROM temp.f2b_stage")

    async def _archive_stage(
        self, blocklist_jail: str, state: Mapping[str, str], *, bulk: bool
    ) -> int:
        """Move the staged rows into the archive in one transaction (fail2ban's DB idle)."""
        conn = self._conn
        async with self._archive.write_lock:
            pending = list(
                await conn.execute_fetchall(
                    "SELECT 1 FROM ban_events WHERE recorded_by = 'ban_watch' LIMIT 1"
                )
            )
            if pending:  # the ban watch's rows are looked up in the page by key
                await conn.execute(
                    "CREATE INDEX temp.f2b_stage_key ON f2b_stage (jail, ip, timeofban)"
                )
            await conn.execute("BEGIN")
            try:
                if pending:
                    await conn.execute(self._align)
                cursor = await conn.execute(
                    self._insert, {"blocklist": blocklist_jail, "ip_indexed": bulk}
                )
                added = cursor.rowcount
                await cursor.close()
                if pending:
                    await conn.execute(self._fill)
                for key, value in state.items():
                    await put_state(conn, key, value)
                await conn.execute("COMMIT")
            except BaseException:
                await rollback(conn)
                raise
        return max(added, 0)


def row_key(jail: object, ip: object, timeofban: object) -> str:
    """The natural key of a fail2ban row as one string."""
    return f"{jail}\x1f{ip}\x1f{timeofban}"
