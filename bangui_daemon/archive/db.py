"""The daemon's own sqlite archive: one writer, one reader, numbered migrations.

WAL lets the reader connection answer D-Bus queries while a task writes. Every
multi-statement write goes through `Archive.write()`, one `BEGIN IMMEDIATE`
transaction serialised by a lock, so a crash leaves either all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from bangui_daemon.errors import ArchiveOpenError, NotEnoughSpace, SchemaTooNew

log = structlog.get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
Row = tuple[Any, ...]


@dataclass(frozen=True)
class Migration:
    """One numbered schema step, applied in its own transaction."""

    version: int
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    """Return the migrations shipped in the package, checked to be numbered 1..N."""
    found: list[Migration] = []
    for entry in resources.files("bangui_daemon.archive.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migration numbering has a gap before {migration.name}")
    return found


class Archive:
    """Async access to the archive file; create with `await Archive.open(path)`."""

    def __init__(self, path: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._side: set[aiosqlite.Connection] = set()

    @classmethod
    async def open(
        cls,
        path: str,
        migrations: Sequence[Migration] | None = None,
        on_migration: Callable[[Migration], None] = lambda _m: None,
    ) -> Archive:
        """Open (creating if needed) and migrate the archive at `path`.

        `on_migration` is told before each step: a step may rebuild a large table.
        """
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            writer = await _connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise ArchiveOpenError(f"cannot open {path}: {_why(exc)}") from None
        try:
            try:
                await writer.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
                raise ArchiveOpenError(f"cannot open {path}: {_why(exc)}") from None
            await _migrate(
                writer,
                path,
                bundled_migrations() if migrations is None else migrations,
                on_migration,
            )
            reader = await _connect(path, query_only=True)
        except BaseException:
            await _close(writer)
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        """Close both connections; the WAL is checkpointed by sqlite on the last close."""
        for conn in list(self._side):  # a side connection whose close was cancelled
            with contextlib.suppress(Exception):
                await _close(conn)
            self._side.discard(conn)
        await _close(self._reader)
        await _close(self._writer)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """Yield the writer inside one BEGIN IMMEDIATE transaction; commit or roll back."""
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await rollback(self._writer)
                raise
            await self._writer.execute("COMMIT")

    @property
    def write_lock(self) -> asyncio.Lock:
        """Held by every writer; a side connection that writes must hold it too."""
        return self._write_lock

    @asynccontextmanager
    async def side_connection(
        self, busy_timeout_ms: int = 2000
    ) -> AsyncIterator[aiosqlite.Connection]:
        """A short-lived extra connection (URI names allowed, e.g. to ATTACH read-only)."""
        conn = await _connect(self.path, uri=True)
        self._side.add(conn)
        try:
            await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            yield conn
        finally:
            await _close(conn)  # cancelled here: it stays in _side for close()
            self._side.discard(conn)

    async def change_in_batches(
        self,
        sql: str,
        params: Sequence[Any],
        batch: int,
        on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Run a DELETE or UPDATE whose last parameter is a LIMIT, one short transaction
        per batch, until a batch comes back short; return the rows changed.

        Purges and merges never hold the writer long, and an interrupted one is simply
        continued by the next run (each batch only takes rows still to be changed).
        """
        deleted = 0
        while True:
            async with self.write() as conn:
                cursor = await conn.execute(sql, (*params, batch))
                n = cursor.rowcount
                await cursor.close()
            deleted += n
            if on_batch is not None:
                on_batch(n)
            if n < batch:
                return deleted

    async def reader_function(self, name: str, nargs: int, fn: Any) -> None:
        """Register a deterministic SQL function on the reader connection."""
        await self._reader.create_function(name, nargs, fn, deterministic=True)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        """Run one read query on the reader connection."""
        async with self._reader.execute(sql, tuple(params)) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        """Run one read query and return its first row, if any."""
        async with self._reader.execute(sql, tuple(params)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else tuple(row)

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Return the first column of the first row (None when there is no row)."""
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


def _why(exc: BaseException) -> str:
    """The reason alone: an OSError's text without its repr of the path."""
    if isinstance(exc, FileExistsError | NotADirectoryError):  # from mkdir(parents=True)
        return "a part of its directory is not a directory"
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


async def _connect(
    path: str, *, uri: bool = False, query_only: bool = False
) -> aiosqlite.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
    async def opened() -> aiosqlite.Connection:
        conn = aiosqlite.connect(path, isolation_level=None, timeout=30.0, uri=uri)
        # Last line of defence: a worker thread whose close a cancellation skipped must
        # not keep the process alive after SIGTERM (Connection is the Thread in 0.17,
        # holds it in 0.22; the thread starts on await).
        worker = getattr(conn, "_thread", conn)
        if isinstance(worker, threading.Thread):
            worker.daemon = True
        return await conn

    opening = asyncio.ensure_future(opened())
    try:
        conn = await asyncio.shield(opening)
    except asyncio.CancelledError:  # let the thread come up, then shut it down
        with contextlib.suppress(Exception):
            await _close(await opening)
        raise
    try:
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA busy_timeout=30000")
        if query_only:
            await conn.execute("PRAGMA query_only=ON")
    except BaseException:
        await _close(conn)
        raise
    return conn


async def rollback(conn: aiosqlite.Connection) -> None:
    """Roll back a failed transaction without hiding why it failed.

    After SQLITE_FULL, IOERR, BUSY or NOMEM SQLite may have rolled back by itself; a
    ROLLBACK then fails with "cannot rollback - no transaction is active", and that
    error would replace the real cause ("database or disk is full") in every report.
    """
    if not conn.in_transaction:
        return
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rollback_failed", error=str(exc))


async def _close(conn: aiosqlite.Connection) -> None:
    """Close even when the caller is being cancelled.

    aiosqlite runs each connection in a non-daemon thread (0.17 on Debian): one left
    open keeps the interpreter from exiting after SIGTERM.
    """
    closing = asyncio.ensure_future(conn.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


async def _current_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ) as cursor:
        if await cursor.fetchone() is None:
            return 0
    async with conn.execute("SELECT version FROM schema_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


# A step that rebuilds a table writes the new copy and its WAL before the old one is
# freed: about three times the archive, measured on migration 4.
MIGRATION_SPACE_FACTOR = 3


def _check_space(path: str) -> None:
    """Refuse a migration that would fill the disk halfway (and roll back at every start)."""
    if path == ":memory:":
        return
    size = sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
    need = size * MIGRATION_SPACE_FACTOR
    where = str(Path(path).resolve().parent)
    free = shutil.disk_usage(where).free
    if free < need:
        mib = 1024 * 1024
        raise NotEnoughSpace(
            f"migrating the archive {path} ({size // mib} MiB) needs about {need // mib} MiB "
            f"free in {where}, only {free // mib} MiB are; nothing was changed: free some "
            "space or move [archive] path"
        )


async def _migrate(
    conn: aiosqlite.Connection,
    path: str,
    migrations: Sequence[Migration],
    on_migration: Callable[[Migration], None],
) -> None:
    current = await _current_version(conn)
    known = migrations[-1].version if migrations else 0
    if current > known:
        raise SchemaTooNew(
            f"the archive schema is version {current}, newer than the {known} this "
            "bangui-daemon knows; upgrade bangui-daemon or restore an older archive"
        )
    pending = [m for m in migrations if m.version > current]
    if pending and current > 0:
        await asyncio.to_thread(_check_space, path)
    for migration in pending:
        on_migration(migration)
        started = time.monotonic()
        # The whole step, version bump included, is one transaction inside the script,
        # so a failure or a crash leaves the previous version intact.
        script = (
            "BEGIN IMMEDIATE;\n"
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);\n"
            f"{migration.sql}\n;"
            "DELETE FROM schema_version;\n"
            f"INSERT INTO schema_version (version) VALUES ({migration.version});\n"
            "COMMIT;"
        )
        try:
            await conn.executescript(script)
        except sqlite3.Error:
            await rollback(conn)
            log.error("migration_failed", migration=migration.name)
            raise
        log.info(
            "migration_applied",
            migration=migration.name,
            version=migration.version,
            seconds=round(time.monotonic() - started, 3),
        )
    if pending and current > 0:  # give back the WAL a rebuild grew
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
