"""Read-only access to fail2ban's own sqlite database.

fail2ban writes its DB from an observer thread with sqlite's 5 s busy timeout, and a
reader holding a read transaction longer than that makes fail2ban drop the ban row
for good. So every read here is one short statement on a fresh read-only connection,
run in a worker thread, fetched completely before the connection closes; callers page
through `bans` by rowid. Nothing here changes a pragma or the journal mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bangui_daemon.errors import Fail2banUnavailable, InvalidArgument

_T = TypeVar("_T")

#: fail2ban 0.10's upgrade marks rows from before `bantime` existed with -2 ("unknown").
UNKNOWN_BANTIME = -2
MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class BanRow:
    """One row of fail2ban's `bans` history table, with `data` decoded."""

    rowid: int
    jail: str
    ip: str
    timeofban: int
    bantime: int
    bancount: int
    failures: int
    matches: list[str]


class _MissingError(Exception):
    """The DB file or the `bans` table is not there (yet)."""


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str | bytes):
        with contextlib.suppress(ValueError):
            return int(value)
    return default


def decode_data(raw: object) -> tuple[int, list[str]]:
    """(failures, matches) from the JSON `data` column (a BLOB under Python 3).

    Each match is either `[prefix, date, rest]` or a plain string; lists are joined
    back into the original log line. Anything undecodable yields (0, []).
    """
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if not isinstance(raw, bytes | str):
        return 0, []
    try:
        data = json.loads(raw)
    except ValueError:
        return 0, []
    if not isinstance(data, dict):
        return 0, []
    failures = _as_int(data.get("failures"), 0)
    matches: list[str] = []
    raw_matches = data.get("matches")
    if isinstance(raw_matches, list):
        for item in raw_matches:
            if isinstance(item, str):
                matches.append(item)
            elif isinstance(item, list) and all(isinstance(part, str) for part in item):
                matches.append("".join(item))
    return failures, matches


class Fail2banDatabase:
    """Short, read-only, retrying queries against fail2ban's sqlite file."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout: float = 0.5,
        lock_retries: int = 6,
        retry_delay: float = 0.05,
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock_retries = lock_retries
        self._retry_delay = retry_delay

    @property
    def path(self) -> str:
        """Path of fail2ban's DB file."""
        return self._path

    def exists(self) -> bool:
        """Whether the DB file is there (fail2ban may run without one or not yet)."""
        return os.path.isfile(self._path)

    # -------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.exists():
            raise _MissingError
        uri = Path(self._path).absolute().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout, isolation_level=None)
        except sqlite3.OperationalError as exc:
            if not self.exists():
                raise _MissingError from None
            raise Fail2banUnavailable(f"cannot open fail2ban's database: {exc}") from None
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
        rows = conn.execute("SELECT name FROM pragma_table_info(?)", (table,)).fetchall()
        return {str(row[0]) for row in rows}

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], empty: _T) -> _T:
        """Run `fn` on a fresh connection in a thread; retry while fail2ban writes."""
        delay = self._retry_delay
        for attempt in range(self._lock_retries + 1):
            try:
                return await asyncio.to_thread(self._once, fn)
            except _MissingError:
                return empty
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if "locked" not in message and "busy" not in message:
                    raise Fail2banUnavailable(
                        f"cannot read fail2ban's database: {message}"
                    ) from None
                if attempt == self._lock_retries:
                    break
            except sqlite3.DatabaseError as exc:
                raise Fail2banUnavailable(f"cannot read fail2ban's database: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise Fail2banUnavailable("fail2ban's database stayed locked")

    def _once(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._connect() as conn:
            return fn(conn)

    # ---------------------------------------------------------------- queries

    async def schema_version(self) -> int | None:
        """`fail2banDb.version` (4 for fail2ban 0.11 to 1.1), None if unknown."""

        def query(conn: sqlite3.Connection) -> int | None:
            if not self._columns(conn, "fail2banDb"):
                return None
            row = conn.execute("SELECT version FROM fail2banDb LIMIT 1").fetchone()
            return None if row is None else _as_int(row[0], 0) or None

        return await self._run(query, None)

    async def max_rowid(self) -> int:
        """Highest rowid in `bans` (0 when empty); a drop means the DB was recreated."""

        def query(conn: sqlite3.Connection) -> int:
            if not self._columns(conn, "bans"):
                return 0
            row = conn.execute("SELECT max(rowid) FROM bans").fetchone()
            return _as_int(row[0], 0) if row else 0

        return await self._run(query, 0)

    async def count_bans(self) -> int:
        """Number of rows in `bans`."""

        def query(conn: sqlite3.Connection) -> int:
            if not self._columns(conn, "bans"):
                return 0
            row = conn.execute("SELECT count(*) FROM bans").fetchone()
            return _as_int(row[0], 0) if row else 0

        return await self._run(query, 0)

    async def min_max_timeofban(self) -> tuple[int, int] | None:
        """Oldest and newest `timeofban` in `bans`, None when empty."""

        def query(conn: sqlite3.Connection) -> tuple[int, int] | None:
            if not self._columns(conn, "bans"):
                return None
            row = conn.execute("SELECT min(timeofban), max(timeofban) FROM bans").fetchone()
            if row is None or row[0] is None:
                return None
            return _as_int(row[0], 0), _as_int(row[1], 0)

        return await self._run(query, None)

    async def fetch_bans_after(self, rowid: int, limit: int) -> list[BanRow]:
        """Up to `limit` rows with a rowid above `rowid`, in rowid order.

        Caveat for incremental readers: `bans` has no AUTOINCREMENT, so when the
        newest rows are deleted (a manual unban), later bans reuse their rowids.
        """
        return await self._fetch("rowid > ?", (rowid,), limit)

    async def fetch_bans_since(self, timeofban: int, after_rowid: int, limit: int) -> list[BanRow]:
        """Rows with `timeofban >= timeofban`, paged by rowid, to re-check a time window."""
        return await self._fetch("rowid > ? AND timeofban >= ?", (after_rowid, timeofban), limit)

    async def _fetch(self, where: str, params: tuple[int, ...], limit: int) -> list[BanRow]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"page size must be between 1 and {MAX_PAGE}")

        def query(conn: sqlite3.Connection) -> list[BanRow]:
            cols = self._columns(conn, "bans")
            if not cols:
                return []
            bantime = "bantime" if "bantime" in cols else str(UNKNOWN_BANTIME)
            bancount = "bancount" if "bancount" in cols else "1"
            data = "data" if "data" in cols else "NULL"
            # `where` is one of two constants above, never caller text.
            sql = (
                f"SELECT rowid, jail, ip, timeofban, {bantime}, {bancount}, {data} "  # noqa: S608
                f"FROM bans WHERE {where} ORDER BY rowid LIMIT ?"
            )
            rows = conn.execute(sql, (*params, limit)).fetchall()
            return [_to_row(row) for row in rows]

        return await self._run(query, [])


def _to_row(row: tuple[object, ...]) -> BanRow:
    rowid, jail, ip, timeofban, bantime, bancount, data = row
    failures, matches = decode_data(data)
    return BanRow(
        rowid=_as_int(rowid, 0),
        jail="" if jail is None else str(jail),
        ip="" if ip is None else str(ip),
        timeofban=_as_int(timeofban, 0),
        bantime=_as_int(bantime, UNKNOWN_BANTIME),
        bancount=_as_int(bancount, 1),
        failures=failures,
        matches=matches,
    )
