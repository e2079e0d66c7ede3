"""Wait until fail2ban has written the DB rows of bans it already enforces.

fail2ban bans at once but writes the ban's row (`bans` and `bips`, the table it
restores from at start) later, from its observer thread; under load that lags by
seconds. An unbanip that arrives first deletes nothing, the row is written after it,
and a fail2ban restart brings the unbanned address back. So the addresses an unban
is about to lift are first looked up in `bips` until each has its row.

Each lookup is one short read-only statement (at most LOOKUP_ROWS addresses): fail2ban
keeps its DB in rollback-journal mode, and a long read would make its writer wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import structlog

log = structlog.get_logger(__name__)

LOOKUP_ROWS = 500
_FIRST_DELAY = 0.05
_MAX_DELAY = 0.5


def _without_rows(db_path: str, jail: str, ips: Sequence[str]) -> list[str] | None:
    """Those of `ips` with no `bips` row in `jail`; None when the DB cannot tell."""
    uri = f"file:{quote(str(Path(db_path).resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=2.0, isolation_level=None)
    except sqlite3.Error:
        return None
    with contextlib.closing(conn):
        found: set[str] = set()
        try:
            for start in range(0, len(ips), LOOKUP_ROWS):
                chunk = json.dumps(list(ips[start : start + LOOKUP_ROWS]))
                rows = conn.execute(
                    "SELECT ip FROM bips WHERE jail = ? AND ip IN (SELECT value FROM json_each(?))",
                    (jail, chunk),
                ).fetchall()
                found.update(str(r[0]) for r in rows)
        except sqlite3.Error:  # no such table, locked past the timeout, not a DB
            return None
    return [ip for ip in ips if ip not in found]


async def await_ban_rows(db_path: str, jail: str, ips: Sequence[str], within: float) -> bool:
    """Wait (at most `within` s) until every one of `ips` has its row in fail2ban's DB.

    Returns False when the wait ran out, or the DB could not be read: the caller goes on
    (the unban itself must not wait forever on a DB that is elsewhere or gone).
    """
    if not ips:
        return True
    deadline = time.monotonic() + within
    delay = _FIRST_DELAY
    pending: Sequence[str] = ips
    while True:
        missing = await asyncio.to_thread(_without_rows, db_path, jail, pending)
        if missing is None:
            log.warning("fail2ban_db_unreadable", path=db_path)
            return False
        if not missing:
            return True
        if time.monotonic() + delay > deadline:
            log.warning("fail2ban_ban_rows_missing", jail=jail, addresses=len(missing))
            return False
        pending = missing
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY)
