"""blocklist_sources: the configured lists and the outcome of their last import."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from bangui_daemon.archive.db import Archive
from bangui_daemon.errors import InvalidArgument

SOURCE_COLUMNS = (
    "id, name, url, enabled, etag, last_modified, last_run, last_status, last_imported, "
    "last_error, (SELECT count(*) FROM source_entries s WHERE s.source_id = id), "
    "managed, interval, max_entries"
)


@dataclass(frozen=True)
class SourceRow:
    id: int
    name: str
    url: str
    enabled: bool
    etag: str | None
    last_modified: str | None
    last_run: int
    last_status: str
    last_imported: int
    last_error: str
    listed: int
    managed: str = ""
    """Who changes it: "" = D-Bus callers, "config" or "crowdsec" = that config section."""
    interval: int = 0
    """Seconds between scheduled imports; 0 = the blocklist_import task's interval."""
    max_entries: int = 0
    """Entry cap of this source; 0 = blocklist.max_entries."""


class DuplicateName(InvalidArgument):
    """Another source already has that name (the service words what the caller sees)."""


class SourcesRepository:
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    async def all(self) -> list[SourceRow]:
        rows = await self._archive.fetchall(
            f"SELECT {SOURCE_COLUMNS} FROM blocklist_sources ORDER BY id"
        )
        return [_row(r) for r in rows]

    async def get(self, source_id: int) -> SourceRow | None:
        row = await self._archive.fetchone(
            f"SELECT {SOURCE_COLUMNS} FROM blocklist_sources WHERE id = ?", (source_id,)
        )
        return None if row is None else _row(row)

    async def add(
        self,
        name: str,
        url: str,
        enabled: bool,
        now: int,
        *,
        managed: str = "",
        interval: int = 0,
        max_entries: int = 0,
    ) -> int:
        try:
            async with self._archive.write() as conn:
                cursor = await conn.execute(
                    "INSERT INTO blocklist_sources "
                    "(name, url, enabled, created_at, managed, interval, max_entries) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, url, int(enabled), now, managed, interval, max_entries),
                )
                new_id = cursor.lastrowid
                await cursor.close()
        except sqlite3.IntegrityError:
            raise DuplicateName(name) from None
        return int(new_id or 0)

    async def update(
        self,
        source_id: int,
        name: str,
        url: str,
        enabled: bool,
        *,
        managed: str,
        interval: int,
        max_entries: int,
    ) -> None:
        """Change a source; a new URL forgets the conditional-GET validators."""
        try:
            async with self._archive.write() as conn:
                await conn.execute(
                    "UPDATE blocklist_sources SET name = ?, enabled = ?, "
                    "etag = CASE WHEN url = ? THEN etag END, "
                    "last_modified = CASE WHEN url = ? THEN last_modified END, url = ?, "
                    "managed = ?, interval = ?, max_entries = ? WHERE id = ?",
                    (name, int(enabled), url, url, url, managed, interval, max_entries, source_id),
                )
        except sqlite3.IntegrityError:
            raise DuplicateName(name) from None

    async def record_outcome(
        self,
        source_id: int,
        now: int,
        status: str,
        imported: int,
        error: str = "",
        etag: str | None = None,
        last_modified: str | None = None,
    ) -> None:
        """Remember the last run; validators are kept only after a completed import."""
        async with self._archive.write() as conn:
            await conn.execute(
                "UPDATE blocklist_sources SET last_run = ?, last_status = ?, last_imported = ?, "
                "last_error = ?, etag = COALESCE(?, etag), "
                "last_modified = COALESCE(?, last_modified) WHERE id = ?",
                (now, status, imported, error, etag, last_modified, source_id),
            )


def _row(r: tuple[object, ...]) -> SourceRow:
    return SourceRow(
        id=int(str(r[0])),
        name=str(r[1]),
        url=str(r[2]),
        enabled=bool(r[3]),
        etag=None if r[4] is None else str(r[4]),
        last_modified=None if r[5] is None else str(r[5]),
        last_run=int(str(r[6])),
        last_status=str(r[7]),
        last_imported=int(str(r[8])),
        last_error=str(r[9]),
        listed=int(str(r[10])),
        managed=str(r[11]),
        interval=int(str(r[12])),
        max_entries=int(str(r[13])),
    )
