"""Read the ban rows fail2ban appends to its sqlite DB, only the new ones, in short reads.

fail2ban writes one `bans` row per ban (from its observer thread, a few ms after the
ban) and never updates it: the rows after the last rowid read are the bans made since.
Two things break "rowid > mark", and the tail handles both:

- sqlite reuses the highest rowids once the newest rows are deleted (the table has no
  AUTOINCREMENT; a manual unban deletes the address's rows). The last rows read are
  fingerprinted (jail, ip, timeofban); when the row at the mark is gone or different,
  reading resumes after the newest fingerprint that still matches. Rows read twice are
  harmless: the snapshot ignores a ban it already holds.
- the DB replaced, or purged below every fingerprint: the mark jumps to the current end
  and the read says `lost`, so the caller reconciles another way (fail2ban's counters).

fail2ban loses a ban row when a reader holds its DB for seconds (its writer gives up
after 5 s), so every read is one transaction of at most PAGE rows taken by indexed
statements (well under a millisecond for the few rows a wake-up brings, a few ms for a
full page) and closed at once, on a thread of its own so a slow disk never stalls the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

PAGE = 2000  # rows per read transaction
FINGERPRINTS = 64  # newest rows remembered to find the mark again after deletions
BUSY_TIMEOUT = 1.0  # seconds sqlite waits while fail2ban commits (on our thread)

RowKey = tuple[str, str, int]
T = TypeVar("T")


class Fail2banDbUnavailable(Exception):
    """fail2ban's DB (or its `bans` table) cannot be read right now."""


@dataclass(frozen=True, slots=True)
class BanRow:
    """One `bans` row: a ban fail2ban made."""

    rowid: int
    jail: str
    ip: str
    timeofban: int
    bantime: int


@dataclass(frozen=True, slots=True)
class TailRead:
    rows: list[BanRow]
    more: bool  # a full page: read again right away
    lost: bool  # rows may have been skipped (DB replaced or purged): reconcile otherwise


class BanRowTail:
    """The rows of fail2ban's `bans` table after a moving mark."""

    def __init__(self, path: str, *, page: int = PAGE) -> None:
        self._path = path
        self._page = page
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="f2b-db-tail")
        # Touched only on the executor's one thread:
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._mark = 0
        self._prints: deque[tuple[int, RowKey]] = deque(maxlen=FINGERPRINTS)
        self._started = False

    @property
    def path(self) -> str:
        return self._path

    async def start(self) -> None:
        """Put the mark at the table's current end: only bans made from now on are read."""
        await self._call(self._start)

    async def read(self) -> TailRead:
        """The next page of rows after the mark (and move the mark past them)."""
        return await self._call(self._read)

    async def close(self) -> None:
        await self._call(self._close)
        self._executor.shutdown(wait=False)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ---- on the executor thread -------------------------------------------

    def _start(self) -> None:
        conn = self._connection()
        with _read_transaction(conn):
            row = conn.execute(
                "SELECT rowid, jail, ip, timeofban FROM bans ORDER BY rowid DESC LIMIT 1"
            ).fetchone()
        self._prints.clear()
        self._mark = 0
        if row is not None:
            self._mark = int(row[0])
            self._prints.append((self._mark, _key(row[1], row[2], row[3])))
        self._started = True

    def _read(self) -> TailRead:
        if not self._started:
            self._start()
        conn = self._connection()
        lost = False
        with _read_transaction(conn):
            if self._prints and not self._mark_holds(conn):
                lost = self._rewind(conn)
            rows = conn.execute(
                "SELECT rowid, jail, ip, timeofban, bantime FROM bans "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (self._mark, self._page),
            ).fetchall()
        out = [
            BanRow(int(r[0]), str(r[1]), str(r[2]), int(r[3]), int(r[4]))
            for r in rows
            if r[2] is not None
        ]
        if rows:
            last = rows[-1]
            self._mark = int(last[0])
            for r in rows[-FINGERPRINTS:]:
                self._prints.append((int(r[0]), _key(r[1], r[2], r[3])))
        return TailRead(out, more=len(rows) == self._page, lost=lost)

    def _mark_holds(self, conn: sqlite3.Connection) -> bool:
        rowid, key = self._prints[-1]
        row = conn.execute(
            "SELECT jail, ip, timeofban FROM bans WHERE rowid = ?", (rowid,)
        ).fetchone()
        return row is not None and _key(*row) == key

    def _rewind(self, conn: sqlite3.Connection) -> bool:
        """Move the mark back to the newest remembered row that still exists as it was;
        True when none does (the mark then jumps to the end: rows may be skipped)."""
        prints = list(self._prints)
        marks = ",".join("?" * len(prints))
        found = {
            int(r[0]): _key(r[1], r[2], r[3])
            for r in conn.execute(
                f"SELECT rowid, jail, ip, timeofban FROM bans WHERE rowid IN ({marks})",  # noqa: S608
                [rowid for rowid, _ in prints],
            )
        }
        while self._prints and found.get(self._prints[-1][0]) != self._prints[-1][1]:
            self._prints.pop()
        if self._prints:
            self._mark = self._prints[-1][0]
            return False
        row = conn.execute(
            "SELECT rowid, jail, ip, timeofban FROM bans ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        self._mark = 0 if row is None else int(row[0])
        if row is not None:
            self._prints.append((self._mark, _key(row[1], row[2], row[3])))
        return True

    def _connection(self) -> sqlite3.Connection:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            self._close()
            raise Fail2banDbUnavailable(f"{self._path}: {exc.strerror or exc}") from None
        inode = (st.st_dev, st.st_ino)
        if self._conn is not None and inode == self._inode:
            return self._conn
        self._close()  # a new file at the path (fail2ban recreated it): reopen
        uri = f"file:{quote(str(Path(self._path).resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(
                uri,
                uri=True,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,  # no implicit transactions: ours are explicit and short
                check_same_thread=False,  # opened and used on the executor's one thread
            )
        except sqlite3.Error as exc:
            raise Fail2banDbUnavailable(f"{self._path}: {exc}") from None
        try:
            columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(bans)")}
        except sqlite3.Error as exc:
            conn.close()
            raise Fail2banDbUnavailable(f"{self._path}: {exc}") from None
        if not {"jail", "ip", "timeofban", "bantime"} <= columns:
            conn.close()
            raise Fail2banDbUnavailable(f"{self._path} has no usable bans table")
        self._conn, self._inode = conn, inode
        return conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._inode = None


def _key(jail: Any, ip: Any, timeofban: Any) -> RowKey:
    return (str(jail), str(ip), int(timeofban))


@contextlib.contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT around a few SELECTs; never left open, even when one fails."""
    try:
        conn.execute("BEGIN")
    except sqlite3.Error as exc:
        raise Fail2banDbUnavailable(str(exc)) from None
    try:
        yield
    except sqlite3.Error as exc:
        conn.rollback()
        raise Fail2banDbUnavailable(str(exc)) from None
    except BaseException:
        conn.rollback()
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.rollback()
        raise Fail2banDbUnavailable(str(exc)) from None
