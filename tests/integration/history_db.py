"""fail2ban-format databases for the history tests and the bench.

The schema comes from a real ``fail2ban-server`` (a sandbox started once, then
stopped); the ``bans`` rows are then filled with plain sqlite, in one recursive CTE,
so a million rows take seconds. Every row gets a distinct ``timeofban`` (``base + i``),
so fail2ban's rows and the archive's natural key (jail, ip, timeofban) match one to
one and counts can be compared exactly.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

JAILS = ("sshd", "blocklist-import")

# Row i: jail sshd for 4 of 5 rows, an address spread over the whole IPv4 unicast range,
# timeofban = base + i, and a `data` BLOB shaped like fail2ban's (matches + failures).
_FILL = """
WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)
INSERT INTO bans (jail, ip, timeofban, bantime, bancount, data)
SELECT CASE WHEN i % 5 = 0 THEN 'blocklist-import' ELSE 'sshd' END,
       printf('%d.%d.%d.%d', 1 + (i * 7) % 223, (i / 7) % 256, (i / 1792) % 256, i % 251),
       :base + i,
       CASE WHEN i % 5 = 0 THEN 604800 ELSE 3600 END,
       1,
       CAST(CASE WHEN i % 5 = 0 THEN '{"matches": [], "failures": 0}'
            ELSE json_object(
                'matches', json_array(
                    printf('Jan  1 00:00:00 host sshd[%d]: Failed password for root from x', i),
                    printf('Jan  1 00:00:01 host sshd[%d]: Failed password for admin from x', i)),
                'failures', 3) END AS BLOB)
FROM n
"""


def fill_bans(db: Path | str, count: int, *, first: int = 1, base: int | None = None) -> int:
    """Append ``count`` rows (numbered ``first``..) to ``bans``; return the base time used.

    The default base puts the rows in the last ``count`` seconds before now.
    """
    if base is None:
        base = int(time.time()) - first - count - 60
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        # this connection only: a large page cache for the three indexes of `bans`
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("BEGIN")
        conn.execute(_FILL, {"first": first, "last": first + count - 1, "base": base})
        conn.execute("COMMIT")
    finally:
        conn.close()
    return base


def bans_count(db: Path | str) -> int:
    """Rows in fail2ban's ``bans`` table (read-only, one short statement)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM bans").fetchone()[0])
    finally:
        conn.close()


def schema_only_copy(src: Path | str, dst: Path | str) -> None:
    """Copy fail2ban's schema (and its jails rows) from ``src`` into a new ``dst``."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(str(dst), isolation_level=None)
    try:
        target.execute("BEGIN")
        for (sql,) in source.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
            "ORDER BY type = 'index'"
        ):
            target.execute(sql)
        for table in ("fail2banDb", "jails"):
            rows = source.execute(f"SELECT * FROM {table}").fetchall()
            if rows:
                marks = ",".join("?" * len(rows[0]))
                target.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        target.execute("COMMIT")
    finally:
        source.close()
        target.close()


def archive_compare(f2b_db: Path | str, archive: Path | str) -> dict[str, int]:
    """Compare fail2ban's bans with the archive's ban events, both opened read-only.

    Returns the counts: ``f2b``, ``archived`` (ban events), ``missing`` (in fail2ban,
    not archived), ``extra`` (archived ban events fail2ban does not have) and
    ``duplicates`` (ban events sharing one natural key).
    """
    conn = sqlite3.connect(f"file:{f2b_db}?mode=ro", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS a", (f"file:{archive}?mode=ro",))
        f2b = conn.execute("SELECT count(*) FROM main.bans").fetchone()[0]
        archived = conn.execute(
            "SELECT count(*) FROM a.ban_events WHERE action = 'ban'"
        ).fetchone()[0]
        missing = conn.execute(
            "SELECT count(*) FROM (SELECT jail, ip, timeofban FROM main.bans EXCEPT "
            "SELECT jail, ip, timeofban FROM a.ban_events WHERE action = 'ban')"
        ).fetchone()[0]
        extra = conn.execute(
            "SELECT count(*) FROM (SELECT jail, ip, timeofban FROM a.ban_events "
            "WHERE action = 'ban' EXCEPT SELECT jail, ip, timeofban FROM main.bans)"
        ).fetchone()[0]
        distinct = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT jail, ip, timeofban FROM a.ban_events "
            "WHERE action = 'ban')"
        ).fetchone()[0]
    finally:
        conn.close()
    return {
        "f2b": int(f2b),
        "archived": int(archived),
        "missing": int(missing),
        "extra": int(extra),
        "duplicates": int(archived) - int(distinct),
    }


def read_state(archive: Path | str, key: str) -> str | None:
    """One daemon_state value of a (running) daemon's archive, read-only."""
    try:
        conn = sqlite3.connect(f"file:{archive}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None
    try:
        row = conn.execute("SELECT value FROM daemon_state WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return None
    finally:
        conn.close()
    return None if row is None else str(row[0])
