"""daemon_state: small durable values (high-water marks, last run times)."""

from __future__ import annotations

import aiosqlite

from bangui_daemon.archive.db import Archive


async def get_state(archive: Archive, key: str) -> str | None:
    """Return the stored value of `key`, if any."""
    value = await archive.scalar("SELECT value FROM daemon_state WHERE key = ?", (key,))
    return None if value is None else str(value)


async def put_state(conn: aiosqlite.Connection, key: str, value: str) -> None:
    """Store `key` inside the caller's write transaction."""
    await conn.execute(
        "INSERT INTO daemon_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
