"""import_runs: one row per (source, content hash), pending -> completed | failed.

The claim is one `INSERT ... ON CONFLICT ... RETURNING` inside BEGIN IMMEDIATE, so
there is no check-then-insert window: a completed hash is never claimed again, and a
failed or crashed (pending) one is taken over by the next import.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from bangui_daemon.archive.db import Archive

RUN_COLUMNS = (
    "id, source_id, content_hash, status, started_at, finished_at, entries, imported, "
    "removed, invalid, refused, error"
)


@dataclass(frozen=True)
class RunRow:
    id: int
    source_id: int
    content_hash: str
    status: str
    started_at: int
    finished_at: int
    entries: int
    imported: int
    removed: int
    invalid: int
    refused: int
    error: str


@dataclass(frozen=True)
class Claim:
    run_id: int
    already_completed: bool


class ImportRunsRepository:
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    async def claim(self, source_id: int, content_hash: str, now: int) -> Claim:
        """Start (or take over) the run for this content; tell if it already completed."""
        async with self._archive.write() as conn:
            cursor = await conn.execute(
                "INSERT INTO import_runs (source_id, content_hash, status, started_at) "
                "VALUES (?, ?, 'pending', ?) "
                "ON CONFLICT (source_id, content_hash) DO UPDATE SET status = 'pending', "
                "started_at = excluded.started_at, finished_at = 0, error = '' "
                "WHERE import_runs.status != 'completed' RETURNING id",
                (source_id, content_hash, now),
            )
            row = await cursor.fetchone()
            await cursor.close()
            if row is not None:
                return Claim(int(row[0]), already_completed=False)
            cursor = await conn.execute(
                "SELECT id FROM import_runs WHERE source_id = ? AND content_hash = ?",
                (source_id, content_hash),
            )
            row = await cursor.fetchone()
            await cursor.close()
        assert row is not None  # the conflict above proves the row exists
        return Claim(int(row[0]), already_completed=True)

    async def reopen(self, run_id: int, now: int) -> None:
        """Take a completed run back to pending: its content is listed again after another."""
        async with self._archive.write() as conn:
            await conn.execute(
                "UPDATE import_runs SET status = 'pending', started_at = ?, finished_at = 0, "
                "error = '' WHERE id = ?",
                (now, run_id),
            )

    async def find(self, source_id: int, content_hash: str) -> RunRow | None:
        row = await self._archive.fetchone(
            f"SELECT {RUN_COLUMNS} FROM import_runs WHERE source_id = ? AND content_hash = ?",
            (source_id, content_hash),
        )
        return None if row is None else RunRow(*row)

    async def get(self, run_id: int) -> RunRow | None:
        row = await self._archive.fetchone(
            f"SELECT {RUN_COLUMNS} FROM import_runs WHERE id = ?", (run_id,)
        )
        return None if row is None else RunRow(*row)

    async def fail(self, run_id: int, error: str, now: int, counts: dict[str, int]) -> None:
        async with self._archive.write() as conn:
            await conn.execute(
                "UPDATE import_runs SET status = 'failed', finished_at = ?, error = ?, "
                "entries = ?, imported = ?, removed = ?, invalid = ?, refused = ? "
                "WHERE id = ? AND status = 'pending'",
                (now, error, *_counts(counts), run_id),
            )

    async def page(self, source_id: int, offset: int, limit: int) -> tuple[list[RunRow], int]:
        where, params = ("WHERE source_id = ?", [source_id]) if source_id else ("", [])
        total = int(
            await self._archive.scalar(f"SELECT count(*) FROM import_runs {where}", params) or 0
        )
        rows = await self._archive.fetchall(
            f"SELECT {RUN_COLUMNS} FROM import_runs {where} "
            "ORDER BY started_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [RunRow(*r) for r in rows], total


async def complete_run(
    conn: aiosqlite.Connection, run_id: int, now: int, counts: dict[str, int]
) -> None:
    """Mark a run completed inside the caller's (final) import transaction."""
    await conn.execute(
        "UPDATE import_runs SET status = 'completed', finished_at = ?, error = '', "
        "entries = ?, imported = ?, removed = ?, invalid = ?, refused = ? WHERE id = ?",
        (now, *_counts(counts), run_id),
    )


def _counts(counts: dict[str, int]) -> tuple[int, ...]:
    return tuple(counts.get(k, 0) for k in ("entries", "added", "removed", "invalid", "refused"))
