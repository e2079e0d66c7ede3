"""What each source lists (source_entries) and what imports banned (import_bans).

Together they are the reference count: an entry stays banned while any source lists
it, and only an entry an import banned is ever unbanned by an import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import aiosqlite

from bangui_daemon.archive.db import Archive

CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class ListingsRepository:
    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    async def entries(self, source_id: int) -> set[str]:
        rows = await self._archive.fetchall(
            "SELECT entry FROM source_entries WHERE source_id = ?", (source_id,)
        )
        return {str(r[0]) for r in rows}

    async def listed_elsewhere(self, source_id: int, entries: Iterable[str]) -> set[str]:
        """Those of `entries` that some other source still lists."""
        found: set[str] = set()
        for chunk in _chunks(sorted(entries)):
            marks = ",".join("?" * len(chunk))
            rows = await self._archive.fetchall(
                f"SELECT DISTINCT entry FROM source_entries WHERE source_id != ? "
                f"AND entry IN ({marks})",
                [source_id, *chunk],
            )
            found.update(str(r[0]) for r in rows)
        return found

    async def import_bans(self) -> dict[str, str]:
        """entry -> 'pending' | 'banned' for everything imports have banned."""
        rows = await self._archive.fetchall("SELECT entry, state FROM import_bans")
        return {str(r[0]): str(r[1]) for r in rows}

    async def advance(
        self,
        source_id: int,
        banned: Sequence[str],
        pending: Sequence[str],
        jail: str,
        run_id: int,
        now: int,
    ) -> None:
        """One transaction: `banned` were banned (and join the source's listing), and
        the intent to ban `pending` is recorded before they are sent.

        Listing banned entries early is safe: they are in the new content, so a retry
        after a crash computes the same diff, and the final transaction has less to do.
        """
        async with self._archive.write() as conn:
            await conn.executemany(
                "UPDATE import_bans SET state = 'banned' WHERE entry = ?", [(e,) for e in banned]
            )
            await conn.executemany(
                "INSERT INTO source_entries (source_id, entry) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                [(source_id, e) for e in banned],
            )
            await conn.executemany(
                "INSERT INTO import_bans (entry, jail, run_id, state, banned_at) "
                "VALUES (?, ?, ?, 'pending', ?) ON CONFLICT (entry) DO NOTHING",
                [(e, jail, run_id, now) for e in pending],
            )

    async def mark_banned(self, entries: Sequence[str]) -> None:
        async with self._archive.write() as conn:
            await conn.executemany(
                "UPDATE import_bans SET state = 'banned' WHERE entry = ?", [(e,) for e in entries]
            )

    async def forget_bans(self, entries: Sequence[str]) -> None:
        async with self._archive.write() as conn:
            await conn.executemany(
                "DELETE FROM import_bans WHERE entry = ?", [(e,) for e in entries]
            )

    async def remove_source(self, source_id: int, unbanned: Sequence[str]) -> None:
        """Delete a source (its runs and listing cascade) and the bans it alone held."""
        async with self._archive.write() as conn:
            await conn.executemany(
                "DELETE FROM import_bans WHERE entry = ?", [(e,) for e in unbanned]
            )
            await conn.execute("DELETE FROM blocklist_sources WHERE id = ?", (source_id,))


async def replace_listing(
    conn: aiosqlite.Connection, source_id: int, added: Sequence[str], dropped: Sequence[str]
) -> None:
    """Apply the listing diff inside the caller's (final) import transaction."""
    await conn.executemany(
        "DELETE FROM source_entries WHERE source_id = ? AND entry = ?",
        [(source_id, e) for e in dropped],
    )
    await conn.executemany(
        "INSERT INTO source_entries (source_id, entry) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(source_id, e) for e in added],
    )
