"""Copy fail2ban's `bans` rows into the archive inside SQLite, in short pages.

fail2ban's DB is ATTACHed read-only to a side connection, so a page is one
`INSERT ... SELECT` with no Python per row: the copy costs about what a raw copy
costs. Each page is its own short transaction that also moves the high-water mark,
so a crash resumes where it stopped and fail2ban's writer is never starved (it loses
ban rows when a reader holds its DB for seconds).

Why not BEGIN IMMEDIATE here: with a database attached, IMMEDIATE takes a write lock
on fail2ban's DB too and would block fail2ban for the whole transaction. A deferred
BEGIN whose first statement writes the archive takes the archive's write lock at once
and only a shared, page-long read lock on fail2ban's DB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import aiosqlite

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.state_repo import put_state


def _ro_uri(path: str) -> str:
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


CHECKPOINT_PAGES = 16384  # 64 MiB of WAL with 4 KiB pages


class Fail2banDbMissing(Exception):
    """fail2ban's DB file or its `bans` table does not exist (yet)."""


class Fail2banCopy:
    """One open copy session; create with `Fail2banCopy.open(archive, path)`."""

    def __init__(self, archive: Archive, conn: aiosqlite.Connection, columns: set[str]) -> None:
        self._archive = archive
        self._conn = conn
        bancount = "b.bancount" if "bancount" in columns else "1"
        data = "b.data" if "data" in columns else "NULL"
        self._select = (
            f"SELECT 'ban', b.jail, b.ip, b.timeofban, b.bantime, {bancount}, {data}, "
            "CASE WHEN b.jail = :blocklist THEN 'blocklist' ELSE 'selfblock' END, "
            "'history_sync', :ip_indexed, coalesce(g.country_code, ''), coalesce(g.asn, '') "
            "FROM f2b.bans AS b LEFT JOIN geo_cache AS g ON g.ip = b.ip AND g.found = 1 "
            "WHERE b.ip IS NOT NULL AND {where}"
        )
        self._fill = (
            f"UPDATE ban_events SET data = b.data, bancount = b.bancount, "
            "recorded_by = 'history_sync' "
            f"FROM (SELECT jail, ip, timeofban, {data} AS data, {bancount} AS bancount "
            "      FROM f2b.bans AS b WHERE {where}) AS b "
            "WHERE ban_events.recorded_by = 'ban_watch' AND +ban_events.action = 'ban' "
            "AND ban_events.jail = b.jail AND ban_events.ip = b.ip "
            "AND ban_events.timeofban = b.timeofban"
        )
        # fail2ban's row has round(time of ban), the ban watch saw it truncated (`banip
        # --with-time`): a live ban one second before its row is that row's ban.
        self._align = (
            "UPDATE ban_events SET timeofban = timeofban + 1 "
            "WHERE recorded_by = 'ban_watch' AND +action = 'ban' "
            "AND EXISTS (SELECT 1 FROM f2b.bans AS b WHERE {where} AND b.jail = ban_events.jail "
            "  AND b.ip = ban_events.ip AND b.timeofban = ban_events.timeofban + 1) "
            "AND NOT EXISTS (SELECT 1 FROM f2b.bans AS b WHERE b.jail = ban_events.jail "
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
            rows = await conn.execute_fetchall("PRAGMA f2b.table_info(bans)")
            columns = {str(r[1]) for r in rows}
            if not {"jail", "ip", "timeofban", "bantime"} <= columns:
                raise Fail2banDbMissing(f"{f2b_path} has no usable bans table")
            yield cls(archive, conn, columns)

    async def max_rowid(self) -> int:
        rows = await self._conn.execute_fetchall("SELECT max(rowid) FROM f2b.bans")
        return int(next(iter(rows))[0] or 0)

    async def row_key(self, rowid: int) -> str | None:
        """Fingerprint of one row: tells whether fail2ban's DB was recreated."""
        rows = list(
            await self._conn.execute_fetchall(
                "SELECT jail, ip, timeofban FROM f2b.bans WHERE rowid = ?", (rowid,)
            )
        )
        return None if not rows else row_key(*rows[0])

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
        where = "b.rowid > :after AND b.rowid <= :upto"
        params = {"after": after, "upto": upto, "blocklist": blocklist_jail, "ip_indexed": bulk}
        return await self._copy(where, params, state)

    async def copy_ip(self, ip: str, blocklist_jail: str) -> int:
        """Copy every row fail2ban has for `ip` (before an unban deletes them)."""
        params = {"ip": ip, "blocklist": blocklist_jail, "ip_indexed": False}
        return await self._copy("b.ip = :ip", params, {})

    async def _copy(
        self, where: str, params: Mapping[str, object], state: Mapping[str, str]
    ) -> int:
        conn = self._conn
        async with self._archive.write_lock:
            # read before BEGIN (the lock keeps other writers out): the transaction's
            # first statement must write, see the module docstring
            pending = list(
                await conn.execute_fetchall(
                    "SELECT 1 FROM ban_events WHERE recorded_by = 'ban_watch' LIMIT 1"
                )
            )
            fill_params = {k: v for k, v in params.items() if k not in ("blocklist", "ip_indexed")}
            await conn.execute("BEGIN")
            try:
                if pending:
                    await conn.execute(self._align.format(where=where), fill_params)
                cursor = await conn.execute(
                    "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, bancount, "
                    "data, origin, recorded_by, ip_indexed, country_code, asn) "
                    + self._select.format(where=where)
                    + " ON CONFLICT (timeofban, jail, ip, action) DO NOTHING",
                    dict(params),
                )
                added = cursor.rowcount
                await cursor.close()
                if pending:
                    await conn.execute(self._fill.format(where=where), fill_params)
                for key, value in state.items():
                    await put_state(conn, key, value)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
        return max(added, 0)


def row_key(jail: object, ip: object, timeofban: object) -> str:
    """The natural key of a fail2ban row as one string."""
    return f"{jail}\x1f{ip}\x1f{timeofban}"
